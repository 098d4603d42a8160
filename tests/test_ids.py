"""Request, trace and reservation ids (``gateway.ids``): shape, uniqueness, independence."""

from __future__ import annotations

import os
import random
import re

from gateway import ids


def test_ids_are_lowercase_hex_of_their_width() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", ids.hex128())
    assert re.fullmatch(r"[0-9a-f]{16}", ids.hex64())
    # Leading zeros are kept: the width never shrinks (a traceparent needs all 32 digits).
    assert all(len(ids.hex128()) == 32 for _ in range(20_000))


def test_ids_do_not_repeat() -> None:
    drawn = [ids.hex128() for _ in range(100_000)]
    assert len(set(drawn)) == len(drawn)
    assert len({ids.hex64() for _ in range(100_000)}) == 100_000


def test_seeding_the_shared_generator_does_not_repeat_ids() -> None:
    random.seed(7)
    first = [ids.hex128() for _ in range(3)]
    random.seed(7)
    assert [ids.hex128() for _ in range(3)] != first


def test_a_forked_child_draws_its_own_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, ids.hex128().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child != ids.hex128()  # without the reseed, parent and child would draw the same next id
