"""The tests' anvil must survive deep reorgs on a long chain: the hostile-chain tests rely on it."""

from __future__ import annotations

import httpx

from verinfer.processes import running_anvil

RUNTIME = "602a60005260206000f3"  # returns 42
INIT = "69" + RUNTIME + "600052600a6016f3"  # deploys RUNTIME


def rpc(url: str, method: str, *params: object) -> object:
    answer = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=60
    )
    body = answer.json()
    assert "error" not in body, body
    return body["result"]


def test_a_deep_reorg_after_a_thousand_blocks_keeps_contract_code() -> None:
    """anvil's default history moves old block states to a disk cache, and a reorg to one of them lost
    every contract: the hostile-chain module failed in CI once its shared chain passed ~900 blocks."""
    with running_anvil() as url:
        sender = rpc(url, "eth_accounts")[0]  # type: ignore[index]
        deployment = rpc(url, "eth_sendTransaction", {"from": sender, "data": "0x" + INIT})
        contract = rpc(url, "eth_getTransactionReceipt", deployment)["contractAddress"]  # type: ignore[index]
        rpc(url, "anvil_mine", 1200)
        rpc(url, "anvil_reorg", 150, [])
        assert rpc(url, "eth_getCode", contract, "latest") == "0x" + RUNTIME
