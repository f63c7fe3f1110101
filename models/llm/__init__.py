"""SmolLM2 GGUF -> ONNX conversion (torch-free): fetch, convert, tokenizer, numpy reference."""

from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "smollm2-135m-instruct"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = REPO_ROOT / "build" / "llm" / GGUF_NAME
DEFAULT_OUT = REPO_ROOT / "models" / "llm" / MODEL_NAME
