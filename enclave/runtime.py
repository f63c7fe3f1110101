"""onnxruntime sessions for every manifest model. Inputs reach them validated by protocol/inputs.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from protocol.errors import bad_request, not_found
from protocol.manifest import Manifest, ModelEntry, TensorSpec


def direct_run(session: ort.InferenceSession) -> Callable[..., list[Any]]:
    """The session's C-level run, without InferenceSession.run's per-call Python checks (input names,
    graph capture, OrtValue ownership: about 14k instructions, a tenth of a signed inference). Safe here
    because protocol/inputs.py has already given it exactly the declared inputs as numpy arrays; falls back
    to the public run where a future onnxruntime drops the attribute."""
    binding = getattr(session, "_sess", None)
    run: Callable[..., list[Any]] | None = getattr(binding, "run", None)
    return run if callable(run) else session.run  # both take (output names, feed, run options)


@dataclass(slots=True)
class LoadedModel:
    entry: ModelEntry
    session: ort.InferenceSession
    output_names: list[str]
    output_specs: dict[str, TensorSpec]
    _run: Callable[..., list[Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._run = direct_run(self.session)

    def run(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        try:
            results = self._run(self.output_names, inputs, None)
        except Exception as exc:  # onnxruntime raises its own exception types for invalid input values
            raise bad_request("inference_failed", f"the model rejected the input: {exc}") from exc
        return [
            (spec.name, np.asarray(value)) for spec, value in zip(self.entry.outputs, results, strict=True)
        ]


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Small models: one intra-op thread avoids thread hand-off latency and lets requests run in parallel.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _zeros(spec: TensorSpec) -> np.ndarray:
    return np.zeros(tuple(1 if d == -1 else d for d in spec.shape), dtype=spec.dtype.numpy)


class ModelRuntime:
    """Loads, warms and runs the manifest's models."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.models: dict[str, LoadedModel] = {}
        for entry in manifest.models.values():
            if entry.is_llm:  # served by enclave/llm_service.py behind /v1
                continue
            session = ort.InferenceSession(
                str(manifest.directory / entry.file), _session_options(), providers=["CPUExecutionProvider"]
            )
            declared = [i.name for i in session.get_inputs()]
            if declared != [i.name for i in entry.inputs]:
                raise ValueError(
                    f"{entry.name}: manifest inputs {entry.inputs} differ from the graph's {declared}"
                )
            model = LoadedModel(
                entry, session, [o.name for o in entry.outputs], {o.name: o for o in entry.outputs}
            )
            model.run({spec.name: _zeros(spec) for spec in entry.inputs})  # warm up
            self.models[entry.name] = model

    def get(self, name: Any) -> LoadedModel:
        if not isinstance(name, str):
            raise bad_request("missing_field", "'model' must be a model name (string)")
        model = self.models.get(name)
        if model is None:
            entry = self.manifest.models.get(name)
            if entry is not None and entry.is_llm:
                raise not_found("unknown_model", f"{name!r} is an LLM: POST /v1/completions serves it")
            raise not_found("unknown_model", f"no model named {name!r}; GET /models lists them")
        return model
