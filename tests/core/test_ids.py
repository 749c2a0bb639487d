"""Snowflake ids that cannot collide: the node id comes from ``[engine] node_id`` (or the
Redis lease, tests/cluster/test_nodes.py), so two processes minting on the same clock
never make the same id; and the shape checks of both kinds of table id."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wf78_core import ConfigError, Engine
from wf78_core.config import parse_config
from wf78_core.ids import (
    hold_node_id,
    id_problem,
    node_id,
    release_node_id,
    snowflake_fields,
    snowflake_id,
)

MINTED = 200_000
FORCED_CLOCK = 1_750_000_000.0

# One process: an engine with its node id, minting on a clock that never moves.
_MINT = textwrap.dedent(
    """
    import sys, types
    import anyio
    from wf78_core import Engine, ids

    async def main(node, count, clock, out):
        async with Engine({"engine": {"node_id": node, "journal": "off"}}):
            ids.time = types.SimpleNamespace(time=lambda: clock)  # the forced clock
            minted = [ids.snowflake_id() for _ in range(count)]
        with open(out, "w") as file:
            file.write("\\n".join(minted))

    anyio.run(main, int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
    """
)


def test_two_processes_with_their_own_node_ids_never_mint_the_same_id(tmp_path: Path) -> None:
    outputs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _MINT, str(node), str(MINTED), str(FORCED_CLOCK), str(out)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for node, out in zip((1, 2), outputs, strict=True)
    ]
    for process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    minted = [out.read_text().split("\n") for out in outputs]
    assert [len(ids) for ids in minted] == [MINTED, MINTED]
    assert len(set(minted[0]) | set(minted[1])) == 2 * MINTED  # no duplicate at all
    fields = [[snowflake_fields(value) for value in ids] for ids in minted]
    assert {node for _, node, _ in fields[0]} == {1}
    assert {node for _, node, _ in fields[1]} == {2}
    # The same clock and sequence in both: only the node ids kept them apart.
    assert [(t, s) for t, _, s in fields[0]] == [(t, s) for t, _, s in fields[1]]
    assert fields[0][0][0] == FORCED_CLOCK


def test_node_id_is_checked() -> None:
    assert parse_config({"engine": {"node_id": 1023}}).engine.node_id == 1023
    for bad in (1024, -1):
        with pytest.raises(ConfigError) as raised:
            parse_config({"engine": {"node_id": bad}})
        (problem,) = raised.value.problems
        assert problem.path == "engine.node_id"
        assert "1023" in problem.message or ">= 0" in problem.message
    with pytest.raises(ValueError, match="node id must be an integer from 0 to 1023"):
        hold_node_id(1024)


@pytest.mark.anyio
async def test_the_configured_node_id_is_held_while_the_engine_runs() -> None:
    before = node_id()
    engine = Engine({"engine": {"node_id": 7, "journal": "off"}})
    assert engine.node_id == 7
    async with engine:
        assert node_id() == 7
        assert snowflake_fields(snowflake_id())[1] == 7
    assert node_id() == before


def test_the_node_id_held_last_is_in_use_until_released() -> None:
    before = node_id()
    hold_node_id(5)
    hold_node_id(9)
    try:
        assert node_id() == 9
        release_node_id(9)
        assert node_id() == 5
    finally:
        release_node_id(5)
        release_node_id(9)  # not held any more: ignored
    assert node_id() == before


def test_snowflakes_are_ordered_and_carry_their_fields() -> None:
    minted = [snowflake_id() for _ in range(10_000)]
    assert len(set(minted)) == len(minted)
    assert [int(value) for value in minted] == sorted(int(value) for value in minted)
    with pytest.raises(ValueError, match="not a snowflake id"):
        snowflake_fields("sku-1")
    with pytest.raises(ValueError, match="not a snowflake id"):
        snowflake_fields(str(1 << 63))


@pytest.mark.parametrize(
    ("value", "snowflake", "text"),
    [
        ("123", True, True),
        ("sku-77", False, True),
        ("A.b_c:d-9", False, True),
        ("x" * 64, False, True),
        ("x" * 65, False, False),
        ("1" * 65, False, False),
        ("", False, False),
        ("sku 77", False, False),
        ("ü", False, False),
        ("1\n", False, False),
    ],
)
def test_the_shape_of_each_kind_of_id(value: str, snowflake: bool, text: bool) -> None:
    assert (id_problem(value, "snowflake") is None) is snowflake
    assert (id_problem(value, "text") is None) is text
