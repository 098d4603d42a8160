"""The default groundedness evaluator on realistic support answers (issue 14, scope 1 a).

Every case asserts the exact verdict of every claim and the reason that made it unsupported.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.scoring import Evaluator, GroundednessEvaluator, Judgement, Verdict
from gateway.scoring.groundedness import claims_of, extract_facts, sentences, stem, words

CONTEXT = """\
[1] Refunds: Annual plans can be refunded within 30 days of purchase. Monthly plans are not refundable.
Refunds are paid back to the original payment method.
[2] Billing: Invoices are issued on the 1st of each month. A late fee of $1,200.50 applies to enterprise \
invoices unpaid after 15 days. Resellers receive a 12.5% discount.
[3] Support hours: Our support team is available Monday to Friday, 9am to 5pm CET. Enterprise customers \
get phone support around the clock.
[4] Shipping: Hardware orders are shipped from our Dublin warehouse and arrive within 5 business days.
[5] Holidays: The office is closed on 24 December 2026. The EU data centre moves to Frankfurt on 2027-03-01.
"""
QUESTION = "Can I get a refund for my plan?"

S, U, A = Verdict.SUPPORTED, Verdict.UNSUPPORTED, Verdict.ABSTENTION


def judge(answer: str, context: str = CONTEXT, question: str = QUESTION) -> Judgement:
    return GroundednessEvaluator().score(context, question, answer)


def verdicts(judgement: Judgement) -> list[tuple[str, Verdict, tuple[str, ...]]]:
    return [(c.text, c.verdict, c.reasons) for c in judgement.claims]


def test_it_is_an_evaluator() -> None:
    evaluator = GroundednessEvaluator()
    assert isinstance(evaluator, Evaluator)
    assert evaluator.name == "groundedness"


# (answer, [(claim, verdict, reasons)]): one realistic answer per row.
CASES = [
    pytest.param(
        "You can get a refund on an annual plan within 30 days of buying it [1].",
        [("You can get a refund on an annual plan within 30 days of buying it.", S, ())],
        id="faithful-paraphrase",
    ),
    pytest.param(
        "Annual subscriptions are refundable during the first 30 days after purchase; the money goes back to "
        "your original payment method.",
        [("Annual subscriptions are refundable during the first 30 days after purchase", S, ()),
         ("the money goes back to your original payment method.", S, ())],
        id="paraphrase-two-clauses",
    ),
    pytest.param(
        "You'll get your money back if you cancel an annual plan within 30 days of buying it.",
        [("You'll get your money back if you cancel an annual plan within 30 days of buying it.", S, ())],
        id="idiomatic-paraphrase",
    ),
    pytest.param(
        "Refunds for annual plans are paid back worldwide.",
        [("Refunds for annual plans are paid back worldwide.", U, ("absolute term 'worldwide' not in context",))],
        id="added-scope",
    ),
    pytest.param(
        "Annual plans can be refunded within 60 days of purchase.",
        [("Annual plans can be refunded within 60 days of purchase.", U, ("number '60 days' not in context",))],
        id="swapped-number",
    ),
    pytest.param(
        "Annual plans can be refunded within 30 weeks of purchase.",
        [("Annual plans can be refunded within 30 weeks of purchase.", U,
          ("number '30 weeks' not in context (context has 30 days)",))],
        id="swapped-unit",
    ),
    pytest.param(
        "Hardware orders are shipped from our Berlin warehouse.",
        [("Hardware orders are shipped from our Berlin warehouse.", U, ("entity 'Berlin' not in context",))],
        id="swapped-entity",
    ),
    pytest.param(
        "Hardware ships from the Dublin warehouse and arrives within five business days.",
        [("Hardware ships from the Dublin warehouse and arrives within five business days.", S, ())],
        id="number-in-words-before-a-unit",
    ),
    pytest.param(
        "The office is closed on 25 December 2026.",
        [("The office is closed on 25 December 2026.", U, ("date '25 December 2026' not in context",))],
        id="swapped-date",
    ),
    pytest.param(
        "The office is closed on Dec 24, 2026, and the EU data centre moves to Frankfurt on 1 March 2027.",
        [("The office is closed on Dec 24, 2026", S, ()),
         ("the EU data centre moves to Frankfurt on 1 March 2027.", S, ())],
        id="dates-in-other-formats",
    ),
    pytest.param(
        "The EU data centre moves to Munich in April 2027.",
        [("The EU data centre moves to Munich in April 2027.", U,
          ("date 'April 2027' not in context", "entity 'Munich' not in context"))],
        id="two-failures-both-named",
    ),
    pytest.param(
        "Support is available on Sunday.",
        [("Support is available on Sunday.", U, ("date 'Sunday' not in context",))],
        id="weekday-outside-a-range",
    ),
    pytest.param(
        "Support is available on Wednesday from 9 a.m. until 5 p.m.",
        [("Support is available on Wednesday from 9 a.m. until 5 p.m.", S, ())],
        id="weekday-and-times-inside-the-range",
    ),
    pytest.param(
        "Support is available from 9am to 6pm.",
        [("Support is available from 9am to 6pm.", U, ("time '6pm' not in context",))],
        id="swapped-time",
    ),
    pytest.param(
        "Monthly plans are refundable.",
        [("Monthly plans are refundable.", U,
          ("negation disagrees with context: 'Monthly plans are not refundable.'",))],
        id="negation-flipped-to-positive",
    ),
    pytest.param(
        "Annual plans are not refundable.",
        [("Annual plans are not refundable.", U,
          ("negation disagrees with context: 'Refunds: Annual plans can be refunded within 30 days of purchase.'",))],
        id="negation-flipped-to-negative",
    ),
    pytest.param(
        "Monthly plans can't be refunded, but annual plans can be refunded within 30 days.",
        [("Monthly plans can't be refunded", S, ()), ("annual plans can be refunded within 30 days.", S, ())],
        id="negation-agrees",
    ),
    pytest.param(
        "No, monthly plans can't be refunded. No. Enterprise invoices have no late fee.",
        [("monthly plans can't be refunded.", S, ()), ("No.", S, ("nothing to check",)),
         ("Enterprise invoices have no late fee.", U,
          ("negation disagrees with context: 'A late fee of $1,200.50 applies to enterprise invoices unpaid after 15 "
           "days.'",))],
        id="a-yes-or-no-word-is-not-the-claims-negation",
    ),
    pytest.param(
        "The passages do not say whether gift cards can be refunded.",
        [("The passages do not say whether gift cards can be refunded.", A, ("abstains",))],
        id="abstention-passages",
    ),
    pytest.param(
        "I'm sorry, I don't know. A human agent will follow up with you.",
        [("I'm sorry, I don't know.", A, ("abstains",)), ("A human agent will follow up with you.", A, ("abstains",))],
        id="abstention-dont-know",
    ),
    pytest.param(
        "Gift card refunds are not mentioned in the context.",
        [("Gift card refunds are not mentioned in the context.", A, ("abstains",))],
        id="abstention-not-mentioned",
    ),
    pytest.param(
        "Enterprise invoices unpaid after 15 days incur a late fee of $1200.50, and resellers get 12.5 percent off.",
        [("Enterprise invoices unpaid after 15 days incur a late fee of $1200.50", S, ()),
         ("resellers get 12.5 percent off.", S, ())],
        id="currency-and-percentage-formats",
    ),
    pytest.param(
        "The late fee for enterprise invoices is €1,200.50.",
        [("The late fee for enterprise invoices is €1,200.50.", U,
          ("number '€1,200.50' not in context (context has $1,200.50)",))],
        id="swapped-currency",
    ),
    pytest.param(
        "Resellers receive a 15% discount.",
        [("Resellers receive a 15% discount.", U, ("number '15%' not in context (context has 15 days)",))],
        id="swapped-percentage",
    ),
    pytest.param(
        "Invoices are issued on the 2nd of each month.",
        [("Invoices are issued on the 2nd of each month.", U, ("number '2nd' not in context",))],
        id="swapped-ordinal",
    ),
    pytest.param(
        "Hi Dana, refunds go back to the original payment method. Hope this helps!",
        [("refunds go back to the original payment method.", S, ()), ("Hope this helps!", S, ("nothing to check",))],
        id="greeting-and-courtesy-are-not-claims",
    ),
    pytest.param(
        "You will also receive a free gift card with every order.",
        [("You will also receive a free gift card with every order.", U,
          ("absolute term 'free' not in context", "content overlap 0.40 < 0.50 (not in context: free, gift, card)"))],
        id="added-claim-low-overlap",
    ),
    pytest.param(
        "Enterprise customers get unlimited phone support.",
        [("Enterprise customers get unlimited phone support.", U, ("absolute term 'unlimited' not in context",))],
        id="added-absolute-term",
    ),
    pytest.param(
        "The US data centre moves to Frankfurt on 2027-03-01.",
        [("The US data centre moves to Frankfurt on 2027-03-01.", U, ("entity 'US' not in context",))],
        id="swapped-acronym",
    ),
    pytest.param(
        "Resellers get 12.5% off; unpaid enterprise statements carry an extra charge of $1,200.50 once 15 days pass.",
        [("Resellers get 12.5% off", S, ()),
         ("unpaid enterprise statements carry an extra charge of $1,200.50 once 15 days pass.", S, ())],
        id="verified-amounts-carry-a-loose-paraphrase",
    ),
    pytest.param(
        "",
        [],
        id="empty-answer",
    ),
]


@pytest.mark.parametrize(("answer", "expected"), CASES)
def test_support_answers(answer: str, expected: list[tuple[str, Verdict, tuple[str, ...]]]) -> None:
    judgement = judge(answer)
    assert verdicts(judgement) == expected
    bad = [c for c in judgement.claims if c.verdict is U]
    assert (judgement.score > 0) == bool(bad)
    if not bad:
        assert judgement.score == 0.0
        assert judgement.label == "grounded"


def test_no_one_keeps_its_negation() -> None:
    context = "Only workspace owners can delete a workspace."
    judgement = GroundednessEvaluator().score(context, "", "No one can delete a workspace.")
    assert verdicts(judgement) == [
        ("No one can delete a workspace.", U, ("negation disagrees with context: 'Only workspace owners can delete a "
                                                "workspace.'",)),
    ]


def test_un_prefixes_negate_only_against_the_bare_word() -> None:
    context = "Phone support is unavailable on weekends. Unlimited projects are included in every plan."
    evaluator = GroundednessEvaluator()
    assert verdicts(evaluator.score(context, "", "Phone support is available on weekends.")) == [
        ("Phone support is available on weekends.", U,
         ("negation disagrees with context: 'Phone support is unavailable on weekends.'",)),
    ]
    assert [c.verdict for c in evaluator.score(context, "", "Phone support is not available on weekends.").claims] \
        == [S]
    assert [c.verdict for c in evaluator.score(context, "", "Every plan includes unlimited projects.").claims] == [S]
    assert [c.verdict for c in evaluator.score(context, "", "Every plan does not include unlimited projects.").claims] \
        == [U]


PLANS = ("The Starter plan is free and includes 1 project. The Team plan costs $20 per user per month and includes "
         "50 projects. The Enterprise plan has custom pricing and includes SAML single sign-on. Refunds take 5 "
         "business days to process. Annual plans can be refunded within 30 days.")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Team is $20 a user each month with 50 projects.", [(S, ())]),
        ("The Team plan costs $20/user/month.", [(S, ())]),
        ("The Team plan costs $20 per user per year.",
         [(U, ("number '$20 per user per year' not in context (context has $20 per user per month)",))]),
        ("The Team plan is billed at $20 per user yearly.",
         [(U, ("number '$20 per user yearly' not in context (context has $20 per user per month)",))]),
        ("The Team plan includes SAML single sign-on.",
         [(U, ("entity 'Team' is not what the context says: 'The Enterprise plan has custom pricing and includes "
               "SAML single sign-on.'",))]),
        ("The Enterprise plan includes SAML single sign-on.", [(S, ())]),
        ("The Team plan includes 1 project.",
         [(U, ("number '1 project' is not what the context says: 'The Team plan costs $20 per user per month and "
               "includes 50 projects.'",))]),
        # Combining two sentences is not a swap: the value's own sentence shares nearly as much.
        ("Annual plan refunds are processed in 5 business days.", [(S, ())]),
        ("Feel free to ask about the Starter plan.", [(S, ())]),
    ],
)
def test_rates_and_values_swapped_between_statements(answer: str, expected: list[tuple[Verdict, tuple[str, ...]]]) \
        -> None:
    judgement = GroundednessEvaluator().score(PLANS, "", answer)
    assert [(c.verdict, c.reasons) for c in judgement.claims] == expected


def test_the_word_opening_a_sentence_is_not_part_of_a_name() -> None:
    context = "Use 'Forgot password' on the sign-in page. PayPal is not accepted. The link is valid for 1 hour."
    evaluator = GroundednessEvaluator()
    for answer in ("Click Forgot password on the sign-in page.", "Unfortunately PayPal isn't accepted."):
        assert [(c.verdict, c.reasons) for c in evaluator.score(context, "", answer).claims] == [(S, ())]
    assert verdicts(evaluator.score(context, "", "Unfortunately Stripe isn't accepted.")) == [
        ("Unfortunately Stripe isn't accepted.", U, ("entity 'Stripe' not in context",)),
    ]
    # A unit the context puts after a number is still a word of the context: "an hour".
    assert [c.verdict for c in evaluator.score(context, "", "The sign-in link is valid for an hour.").claims] == [S]


def test_one_bad_claim_of_three_scores_about_a_third() -> None:
    judgement = judge(
        "Annual plans can be refunded within 30 days of purchase. "
        "Hardware orders are shipped from our Dublin warehouse. "
        "Enterprise invoices are issued on the 5th of each month."
    )
    assert [c.verdict for c in judgement.claims] == [S, S, U]
    assert judgement.claims[2].reasons == ("number '5th' not in context (context has 5 business days)",)
    # Weighted by content words ("days" after "30" is not one: the number check covers it).
    assert [c.weight for c in judgement.claims] == [4.0, 5.0, 4.0]
    assert judgement.score == pytest.approx(4 / 13)
    assert judgement.score == pytest.approx(1 / 3, abs=0.1)
    assert judgement.hallucinated and judgement.label == "hallucinated"
    assert judgement.unsupported == (judgement.claims[2],)


def test_a_fully_invented_answer_scores_one() -> None:
    judgement = judge("Our Berlin office offers a lifetime warranty on laptops.")
    assert judgement.score == 1.0
    assert judgement.claims[0].reasons == (
        "entity 'Berlin' not in context",
        "absolute term 'lifetime' not in context",
        "content overlap 0.17 < 0.50 (not in context: berlin, offers, lifetime, warranty, laptops)",
    )


def test_empty_context_leaves_only_abstentions_supported() -> None:
    judgement = judge("Annual plans can be refunded within 30 days. The passages do not say more.", context="")
    assert verdicts(judgement) == [
        ("Annual plans can be refunded within 30 days.", U, ("context is empty",)),
        ("The passages do not say more.", A, ("abstains",)),
    ]
    assert judgement.score == pytest.approx(3 / 4)  # weights 3 (annual, plan, refund) and 1 ("more")


def test_empty_answer_scores_zero_with_no_claims() -> None:
    for answer in ("", "   \n ", "[1]"):
        judgement = judge(answer)
        assert judgement.score == 0.0
        assert judgement.claims == ()


def test_question_words_count_half() -> None:
    # "plan" and "refund" are in the context; "voucher" only in the question; "swap" nowhere.
    context = "A plan can be refunded."
    evaluator = GroundednessEvaluator()
    with_question = evaluator.score(context, "Can I swap the plan refund for a voucher?", "Plan refund swap voucher.")
    without = evaluator.score(context, "", "Plan refund swap voucher.")
    assert with_question.claims[0].overlap == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert without.claims[0].overlap == pytest.approx(2 / 4)
    assert without.claims[0].verdict is S  # exactly at the threshold
    assert evaluator.score(context, "", "Plan swap voucher.").claims[0].verdict is U


def test_unicode_text_is_normalised() -> None:
    context = "Les remboursements sont possibles sous 30\u00a0jours. Support in München: Montag bis Freitag."
    judgement = judge("Les remboursements sont possibles sous 30 jours.", context=context)
    assert [c.verdict for c in judgement.claims] == [S]
    judgement = judge("Our support team sits in Zürich.", context=context)
    assert verdicts(judgement) == [
        ("Our support team sits in Zürich.", U,
         ("entity 'Zürich' not in context", "content overlap 0.25 < 0.50 (not in context: team, sits, zürich)")),
    ]
    # Curly quotes and fullwidth digits are folded before anything is compared.
    judgement = judge("\u201cAnnual\u201d plans can be refunded within \uff13\uff10 days.", context=CONTEXT)
    assert [c.verdict for c in judgement.claims] == [S]


def test_a_long_answer_is_scored_in_bounded_time() -> None:
    sentence = ("Annual plans can be refunded within 30 days of purchase, and hardware orders arrive within "
                "5 business days from our Dublin warehouse. ")
    answer = (sentence * (5000 // len(sentence) + 1))[:5000]
    evaluator = GroundednessEvaluator()
    evaluator.score(CONTEXT, QUESTION, answer)  # warm the regex caches
    start = time.process_time()
    judgement = evaluator.score(CONTEXT, QUESTION, answer)
    elapsed = time.process_time() - start
    assert len(judgement.claims) > 40
    assert elapsed < 0.1, f"{elapsed * 1000:.1f} ms for 5 KB"


def test_input_beyond_the_bounds_is_not_read() -> None:
    evaluator = GroundednessEvaluator(max_answer_chars=60)
    judgement = evaluator.score(CONTEXT, QUESTION, "Annual plans can be refunded within 30 days. " * 10)
    assert len(judgement.claims) == 2  # 60 characters hold one whole sentence and a piece of the next
    assert judgement.extra == {"truncated": 1.0}
    assert evaluator.score(CONTEXT, QUESTION, "Annual plans can be refunded.").extra == {}


def test_hostile_text_does_not_raise() -> None:
    for answer in ("$$$ 1,2,3,,, %%% ...", "\x00\x01\ufffd" * 50, "A" * 3000, "1" * 3000, "May May May 31 31",
                   "Monday-Sunday - - 9:99 25pm 99:00"):
        judgement = judge(answer)
        assert 0.0 <= judgement.score <= 1.0


def test_judgement_rejects_a_score_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="outside"):
        Judgement(score=1.5)


# --- the pieces --------------------------------------------------------------------------------

def test_sentences_do_not_break_on_decimals_or_abbreviations() -> None:
    text = "The fee is $1,200.50 per year, e.g. for resellers. It starts Dec. 5! Really?\n- Item one\n- Item two"
    assert sentences(text) == [
        "The fee is $1,200.50 per year, e.g. for resellers.", "It starts Dec. 5!", "Really?", "Item one", "Item two",
    ]


def test_claims_split_on_clauses_not_on_noun_phrases() -> None:
    assert claims_of("Refunds and exchanges are free; shipping takes 5 days, but returns take 10 days.") == [
        ("Refunds and exchanges are free", True), ("shipping takes 5 days", False), ("returns take 10 days.", False),
    ]
    assert claims_of("Refunds are available, but not for monthly plans.") == [
        ("Refunds are available, but not for monthly plans.", True),
    ]
    assert claims_of("Paid plans include a 14-day free trial and no credit card is required.") == [
        ("Paid plans include a 14-day free trial", True), ("no credit card is required.", False),
    ]
    assert claims_of("Annual plans and monthly plans are refundable but only within 30 days.") == [
        ("Annual plans and monthly plans are refundable but only within 30 days.", True),
    ]
    assert claims_of("It adds dark mode and offline sync.") == [("It adds dark mode and offline sync.", True)]


def test_words_read_contractions_and_a_few_idioms() -> None:
    assert words("You'll get your money back; we can't send it back right away.") == [
        "you", "refund", "we", "can", "not", "return", "immediately",
    ]
    assert words("Sign in, then log out. The owner's key.") == ["login", "then", "logout", "the", "owner", "key"]


def test_light_stemming_matches_inflections() -> None:
    assert stem("refunds") == stem("refunded") == stem("refundable") == stem("refund")
    assert stem("shipped") == stem("shipping") == stem("ships") == "ship"
    assert stem("cancelled") == stem("cancellation") == stem("cancel")
    assert stem("policies") == stem("policy")
    assert stem("process") == "process"


def test_number_formats_are_normalised() -> None:
    facts = extract_facts("It costs $1,200.50 or 1200.5 USD, 30% or 30 per cent, EUR 30, the 3rd, 5 working days.")
    assert [(q.value, q.unit) for q in facts.quantities] == [
        ("1200.5", "usd"), ("1200.5", "usd"), ("30", "%"), ("30", "%"), ("30", "eur"), ("3", "th"), ("5", "day"),
    ]


def test_dates_are_parsed_in_several_formats() -> None:
    facts = extract_facts("On 2026-12-05, 5 December 2026, Dec 5, the 5th of December, and December 2026.")
    assert [(d.month, d.day, d.year) for d in facts.dates] == [
        (12, 5, 2026), (12, 5, 2026), (12, 5, None), (12, 5, None), (12, None, 2026),
    ]
    assert facts.quantities == []


@settings(max_examples=60, deadline=None)
@given(context=st.text(max_size=400), answer=st.text(max_size=400))
def test_any_text_gets_a_score_in_the_unit_interval(context: str, answer: str) -> None:
    judgement = GroundednessEvaluator().score(context, "", answer)
    assert 0.0 <= judgement.score <= 1.0
    assert all(c.weight >= 1.0 for c in judgement.claims)
    assert (judgement.score > 0) == any(c.verdict is U for c in judgement.claims)
