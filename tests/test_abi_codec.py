"""AbiCodec against web3's own contract objects, on a real task's calls and logs."""

from __future__ import annotations

import random

import pytest
from web3 import AsyncWeb3

from discofl_p2p.chain.abi_codec import AbiCodec
from discofl_p2p.chain.artifact import load_artifact
from discofl_p2p.chain.client import RewardRule, TaskParams, connect
from discofl_p2p.chain.limits import ETH
from discofl_p2p.chain.scripted import deploy_and_register, play_round
from tests.conftest import run

ABI = load_artifact()["abi"]


def test_every_log_of_a_round_decodes_as_web3_decodes_it(anvil):
    async def go():
        w3 = await connect(anvil.ws_url)
        try:
            params = TaskParams(rounds=2, top_k=2, max_workers=4, deposit_wei=ETH, rule=RewardRule.EXPLICIT)
            task = await deploy_and_register(w3, anvil.ws_url, params, 3, seed=41)
            await play_round(task, 1, random.Random(1), lambda n: range(2), amounts=lambda k: [ETH // 8] * k)
            logs = await w3.eth.get_logs({"address": task.requester.address, "fromBlock": 0, "toBlock": "latest"})
            contract = w3.eth.contract(address=task.requester.address, abi=ABI)
            codec = AbiCodec(ABI)
            names = set()
            for log in logs:
                name, args = codec.decode_log(log["topics"], log["data"])
                expected = getattr(contract.events, name)().process_log(log)["args"]
                assert args == dict(expected), name
                assert [type(v) for v in args.values()] == [type(v) for v in expected.values()], name
                names.add(name)
            # the round's whole vocabulary went through: indexed addresses, bytes, arrays
            assert {"WorkerRegistered", "ModelCommitted", "EvaluationOpened", "ScoresRevealed", "RoundSettled"} <= names
            # a view with several outputs and one with a single output
            worker = task.workers[0].account.address
            got = await task.requester.view("workers", worker)
            assert got == list(await contract.functions.workers(worker).call())
            assert await task.requester.view("currentRound") == await contract.functions.currentRound().call() == 2
        finally:
            await w3.provider.disconnect()

    run(go())


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("register", ()),
        ("submitModel", (3, bytes(range(32)))),
        ("openEvaluation", (1, [bytes([i]) * 32 for i in range(5)])),
        ("revealScores", (2, b"\x00\x01\xff\xff", b"\x07" * 32)),
        ("closeTask", (["0x" + "ab" * 20, "0x" + "0c" * 20],)),
        ("settleRound", (1, [b"\x01" * 32], b"\x02" * 54, [0], [5 * ETH])),
    ],
)
def test_calldata_is_web3s_and_decodes_back(name, args):
    codec = AbiCodec(ABI)
    contract = AsyncWeb3().eth.contract(abi=ABI)
    norm = [[AsyncWeb3.to_checksum_address(a) for a in v] if name == "closeTask" else v for v in args]
    data = codec.call_data(name, *norm)
    assert "0x" + data.hex() == contract.encode_abi(name, norm)
    fn, decoded = codec.decode_input(data)
    assert fn == name
    web3_fn, web3_args = contract.decode_function_input(data)
    assert web3_fn.fn_name == name
    assert decoded == {k: list(v) if isinstance(v, tuple) else v for k, v in web3_args.items()}


def test_codec_errors_name_what_is_wrong():
    codec = AbiCodec(ABI)
    with pytest.raises(ValueError, match="no function 'nope'"):
        codec.call_data("nope")
    with pytest.raises(TypeError, match="submitModel takes 2 arguments"):
        codec.call_data("submitModel", 1)
    with pytest.raises(ValueError, match="no function of this contract has selector 0xdeadbeef"):
        codec.decode_input(bytes.fromhex("deadbeef"))
    with pytest.raises(ValueError, match="a log of no event"):
        codec.decode_log([b"\x00" * 32], b"")
