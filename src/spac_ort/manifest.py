"""The bundle manifest, the contract between ``spac-export`` and the runtime: frozen
dataclasses serialised to ``spac-manifest.json``; `load_manifest` validates every field
(`ManifestError` names the field)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Optional

from . import naming
from .errors import BundleError, ManifestError
from . import manifest_checks as checks
from .fields import Reader
from .target_spec import TargetSpec, parse_target

SCHEMA_VERSION = 2      # 2: graph variants (fused graphs) and rope_theta
MANIFEST_KIND = "spac-ort-bundle"


class Family(str, Enum):
    QWEN3_MOE = "qwen3_moe"
    QWEN2_MOE = "qwen2_moe"
    MIXTRAL = "mixtral"
    OLMOE = "olmoe"
    DEEPSEEK_V2 = "deepseek_v2"
    DEEPSEEK_V3 = "deepseek_v3"


class DType(str, Enum):
    FLOAT32 = "float32"


class Scoring(str, Enum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


class TopkMethod(str, Enum):
    GREEDY = "greedy"                              # top-k over all experts
    GROUP_LIMITED_GREEDY = "group_limited_greedy"  # top-k within the best topk_group of n_group groups
    NOAUX_TC = "noaux_tc"          # groups ranked by their top-2 biased scores; experts chosen on
                                   # score + e_score_correction_bias, weighted by the unbiased score


class LayerKind(str, Enum):
    MOE = "moe"
    DENSE = "dense"


@dataclass(frozen=True)
class ModelDims:
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    expert_intermediate: int
    shared_expert_intermediate: int   # 0: the family has no shared expert
    max_positions: int
    cache_heads: int                  # KV cache per layer: past_key [1, cache_heads, P, cache_key_dim],
    cache_key_dim: int                #   past_value [1, cache_heads, P, cache_value_dim]
    cache_value_dim: int              #   (MLA caches the latent and the rotary key: 1 head)


@dataclass(frozen=True)
class Routing:
    scoring: Scoring
    norm_topk_prob: bool
    topk_method: TopkMethod = TopkMethod.GREEDY
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class PieceIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ExpertTable:
    """All experts share one graph signature; paths come from one template.
    ``graph_sha256[layer][expert]`` / ``data_sha256[layer][expert]``; dense layers hold
    empty rows. Every expert graph has the same size, and so does its weight file.
    """

    template: str
    graph_size: int
    data_size: int
    graph_sha256: tuple[tuple[str, ...], ...]
    data_sha256: tuple[tuple[str, ...], ...]
    precision: str = "fp32"                  # or int8 / int4 (spac-export --expert-quant)


@dataclass(frozen=True)
class DraftSpec:
    """The dense draft model: one decoder graph with KV cache, fused (one graph on ONNX
    Runtime's operators, cache in place) or portable (optimum's IO convention)."""

    graph: str             # bundle-relative path of the graph
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    model_type: str
    graphs: naming.Graphs = naming.Graphs.PORTABLE
    rope_theta: float = 10000.0
    head_quant: str = "none"


@dataclass(frozen=True)
class Manifest:
    family: Family
    source_model_type: str
    dims: ModelDims
    routing: Routing
    layer_kinds: tuple[LayerKind, ...]
    dtype: DType
    opset: int
    io: dict[str, PieceIO]
    files: dict[str, FileEntry]
    experts: ExpertTable
    bos_token_id: Optional[int]
    eos_token_ids: tuple[int, ...]
    tokenizer: Optional[str]
    producer: str
    graphs: naming.Graphs = naming.Graphs.PORTABLE
    rope_theta: float = 10000.0       # rotary base: fused graphs take their tables from the runtime
    head_quant: str = "none"          # "int8": the final graph's lm_head is 8-bit
    chat_template: Optional[str] = None   # the tokenizer's chat template (jinja), if the checkpoint has one
    schema_version: int = SCHEMA_VERSION
    kind: str = MANIFEST_KIND
    draft: Optional[DraftSpec] = field(default=None)
    target: Optional[TargetSpec] = None    # a deployment bundle's additions (`target_spec`)

    # ---- derived views -------------------------------------------------------------
    def session_graph(self, rel: str) -> str:
        """The file to open for the session graph ``rel`` (a target's replacement, if any)."""
        return rel if self.target is None else self.target.graph(rel)

    def moe_layers(self) -> list[int]:
        return [i for i, k in enumerate(self.layer_kinds) if k is LayerKind.MOE]

    def expert_graph(self, layer: int, expert: int) -> str:
        return naming.expert_path(layer, expert, self.experts.template)

    def expert_bytes(self) -> int:
        """Weight bytes of one expert as stored (`experts.precision`): the unit of every budget."""
        return checks.expert_nbytes(self.dims.hidden_size, self.dims.expert_intermediate, self.experts.precision)

    def iter_files(self) -> Iterator[tuple[str, FileEntry]]:
        """Every file of the bundle with its expected size and sha256."""
        yield from self.files.items()
        yield from self.iter_expert_files()

    def iter_expert_files(self) -> Iterator[tuple[str, FileEntry]]:
        """Expert graphs and weight files, from the path template."""
        ex = self.experts
        for layer in self.moe_layers():
            for e in range(self.dims.num_experts):
                g = self.expert_graph(layer, e)
                yield g, FileEntry(ex.graph_size, ex.graph_sha256[layer][e])
                yield naming.data_path(g), FileEntry(ex.data_size, ex.data_sha256[layer][e])

    def to_json(self) -> str:
        return json.dumps(_plain(self), indent=1, sort_keys=False) + "\n"


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---- loading and validation ------------------------------------------------------------

def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate the manifest's JSON; `ManifestError` names the first bad field."""
    r = Reader(data, "", path)
    if r.get("kind", str) != MANIFEST_KIND:
        raise r.fail("kind", f"is not '{MANIFEST_KIND}'")
    version = r.get("schema_version", int)
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {version} is not supported by this spac-ort "
            f"(reads version {SCHEMA_VERSION}); re-export the bundle with this spac-ort's spac-export")
    dr = r.sub("dims")
    dims = dr.ints(ModelDims, [f.name for f in dataclasses.fields(ModelDims)])
    checks.check_dims(dr, dims)
    kinds = _layer_kinds(r, dims.num_layers)
    files = _files(r)
    experts = _experts(r.sub("experts"), dims, kinds)
    graphs, head_quant = r.enum("graphs", naming.Graphs), checks.head_quant(r)
    for graph in checks.required_graphs(kinds, dims.shared_expert_intermediate > 0, graphs, head_quant):
        checks.check_listed(r, "files", graph, files)
    tokenizer = r.get("tokenizer", str, optional=True)
    checks.check_listed(r, "tokenizer", tokenizer, files)
    template = r.get("chat_template", str, optional=True)
    checks.check_listed(r, "chat_template", template, files)
    eos = r.get("eos_token_ids", list)
    if not all(isinstance(e, int) and not isinstance(e, bool) and 0 <= e < dims.vocab_size for e in eos):
        raise r.fail("eos_token_ids", f"must be a list of token ids in 0..{dims.vocab_size - 1}")
    return Manifest(
        family=r.enum("family", Family), source_model_type=r.get("source_model_type", str),
        dims=dims, routing=_routing(r.sub("routing")), layer_kinds=kinds, dtype=r.enum("dtype", DType),
        opset=r.get("opset", int), io=_io(r.sub("io")), files=files, experts=experts,
        bos_token_id=r.get("bos_token_id", int, optional=True), eos_token_ids=tuple(eos),
        tokenizer=tokenizer, producer=r.get("producer", str), graphs=graphs, rope_theta=checks.rope_theta(r),
        head_quant=head_quant, chat_template=template,
        schema_version=version, draft=_draft(r, files), target=parse_target(r, files))


def _routing(rr: Reader) -> Routing:
    routing = Routing(rr.enum("scoring", Scoring), rr.get("norm_topk_prob", bool),
                      rr.enum("topk_method", TopkMethod), rr.get("n_group", int), rr.get("topk_group", int),
                      float(rr.get("routed_scaling_factor", (int, float))))
    checks.check_routing(rr, routing)
    return routing


def _layer_kinds(r: Reader, num_layers: int) -> tuple[LayerKind, ...]:
    kinds_raw = r.get("layer_kinds", list)
    try:
        kinds = tuple(LayerKind(k) for k in kinds_raw)
    except (ValueError, TypeError):
        raise r.fail("layer_kinds", "holds an unknown layer kind") from None
    if len(kinds) != num_layers:
        raise r.fail("layer_kinds", f"has {len(kinds)} entries for {num_layers} layers")
    if LayerKind.MOE not in kinds:
        raise r.fail("layer_kinds", "has no moe layer; a bundle holds a mixture-of-experts model")
    return kinds


def _io(io_r: Reader) -> dict[str, PieceIO]:
    io = {}
    for kind in io_r.data:
        pr = io_r.sub(kind)
        io[kind] = PieceIO(tuple(pr.get("inputs", list)), tuple(pr.get("outputs", list)))
    return io


def _files(r: Reader) -> dict[str, FileEntry]:
    files_r = r.sub("files")
    files = {}
    for name in files_r.data:
        checks.check_path(files_r, name, name)
        fr = files_r.sub(name)
        size = fr.get("size", int)
        if size < 0:
            raise fr.fail("size", f"is {size}; sizes are not negative")
        files[name] = FileEntry(size, fr.get("sha256", str))
    return files


def _experts(er: Reader, dims: ModelDims, kinds: tuple[LayerKind, ...]) -> ExpertTable:
    experts = ExpertTable(er.get("template", str), er.get("graph_size", int), er.get("data_size", int),
                          checks.sha_table(er, "graph_sha256"), checks.sha_table(er, "data_sha256"),
                          checks.expert_precision(er))
    checks.check_template(er, experts.template, dims.num_layers, dims.num_experts)
    for key in ("graph_size", "data_size"):
        if getattr(experts, key) < 1:
            raise er.fail(key, f"is {getattr(experts, key)}; an expert file is not empty")
    for layer, kind in enumerate(kinds):
        want = dims.num_experts if kind is LayerKind.MOE else 0
        for key, table in (("graph_sha256", experts.graph_sha256), ("data_sha256", experts.data_sha256)):
            if len(table) != dims.num_layers or len(table[layer]) != want:
                raise er.fail(key, f"does not have {want} entries for layer {layer}")
    return experts


def _draft(r: Reader, files: dict[str, FileEntry]) -> Optional[DraftSpec]:
    if r.get("draft", dict, optional=True) is None:
        return None
    dr = r.sub("draft")
    spec = DraftSpec(graph=dr.get("graph", str), model_type=dr.get("model_type", str),
                     **{k: dr.get(k, int) for k in ("num_layers", "num_kv_heads", "head_dim", "vocab_size",
                                                     "max_positions")},
                     graphs=dr.enum("graphs", naming.Graphs), rope_theta=checks.rope_theta(dr),
                     head_quant=checks.head_quant(dr))
    checks.check_path(dr, "graph", spec.graph)
    checks.check_listed(dr, "graph", spec.graph, files)
    return spec


def load_manifest(bundle: str | Path) -> Manifest:
    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"bundle directory {bundle} does not exist; create it with spac-export MODEL_DIR -o {bundle}")
    if not bundle.is_dir():
        raise BundleError(f"{bundle} is not a directory; pass the bundle directory written by spac-export")
    path = bundle / naming.MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} has no {naming.MANIFEST}, so it is not a spac-ort bundle; create one with spac-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({str(exc)[:200]}); re-export the bundle with spac-export") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    return parse_manifest(data, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
