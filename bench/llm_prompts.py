"""Fixed prompts shared by the LLM benchmark and its llama.cpp baselines, so both prefill the same tokens."""

from __future__ import annotations

from typing import Final

# The short "article" prompt: one sentence; 21 tokens as raw text, 51 once SmolLM2's chat template (with its
# default system message) is applied.
ARTICLE_PROMPT: Final = (
    "Ethereum is the community-run technology powering the cryptocurrency ether (ETH) and thousands of "
    "decentralized applications."
)

# The longer chat prompt: 74 tokens as raw text, 104 once the chat template is applied.
CHAT_PROMPT: Final = (
    "Explain in plain language how a blockchain keeps a shared ledger consistent when thousands of "
    "independent computers, none of which trust each other, each hold a copy of it. Cover what a block "
    "contains, how new blocks are agreed on, why rewriting old history is expensive, and what role "
    "cryptographic hashes and digital signatures play. Keep the answer short and use one simple analogy."
)


def article_messages() -> list[dict[str, str]]:
    """The article prompt as a one-turn chat (the template adds its default system message)."""
    return [{"role": "user", "content": ARTICLE_PROMPT}]


def chat_messages() -> list[dict[str, str]]:
    """The ~105-token chat prompt as a one-turn chat."""
    return [{"role": "user", "content": CHAT_PROMPT}]
