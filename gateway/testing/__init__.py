"""Test doubles that ship with the gateway: ``gateway fake-upstream`` is a documented command.

    fake_upstream/       an OpenAI- and Anthropic-compatible server with faults and delays
    anthropic_answers.py its Anthropic Messages answers (the OpenAI ones are the mock provider's)
"""
