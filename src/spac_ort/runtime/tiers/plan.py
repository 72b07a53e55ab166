r"""The step plan: one decoding step's work as a networkx DiGraph, built once per model
and reused every step.

    draft -> L0.route -> L0.fetch -> L0.fast --> L0.combine -> L1.route -> ... -> head
                   \------------> L0.slow ----/

Nodes are work on a lane (``host``: draft, attention + router, combine, head; ``fast``:
on-demand copies and expert runs on the fast tier; ``slow``: expert runs on the CPU).
Each step fills in the seconds it measured; their running average is the plan's cost
model, from which it decides when each layer's experts are needed: `deadlines` gives the
earliest start of every layer in the next step (the longest path to its route node), and
`by_deadline` orders prefetches so the experts needed first land first. The last step
can be written as JSON or DOT with its critical path (``--plan-out``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import networkx as nx

from ..routing import Key
from ..spac.utility import deadline_order

SMOOTHING = 0.2          # weight of the newest step in the running average


def _layer_nodes(layer: int) -> list[tuple[str, str]]:
    return [(f"L{layer}.route", "host"), (f"L{layer}.fetch", "fast"), (f"L{layer}.fast", "fast"),
            (f"L{layer}.slow", "slow"), (f"L{layer}.combine", "host")]


class StepPlan:
    def __init__(self, moe_layers: Sequence[int]):
        self.layers = tuple(moe_layers)
        self.graph = nx.DiGraph()
        self.graph.add_node("draft", lane="host")
        prev = "draft"
        for layer in self.layers:
            for name, lane in _layer_nodes(layer):
                self.graph.add_node(name, lane=lane)
            r, f, fa, s, c = (n for n, _ in _layer_nodes(layer))
            self.graph.add_edges_from([(prev, r), (r, f), (f, fa), (fa, c), (r, s), (s, c)])
            prev = c
        self.graph.add_node("head", lane="host")
        self.graph.add_edge(prev, "head")
        self.order = list(nx.topological_sort(self.graph))
        self.preds = {n: tuple(self.graph.predecessors(n)) for n in self.order}
        self.cost = dict.fromkeys(self.order, 0.0)          # running average seconds
        self.seconds = dict.fromkeys(self.order, 0.0)       # this step
        self.attrs: dict[str, dict[str, Any]] = {}
        self.step, self.kind = 0, "prefill"
        self.last: dict[str, Any] | None = None             # the step --plan-out writes

    def begin(self, step: int, kind: str) -> None:
        self.step, self.kind = step, kind
        self.seconds = dict.fromkeys(self.order, 0.0)
        self.attrs = {}

    def set(self, node: str, seconds: float, **attrs: Any) -> None:
        self.seconds[node] = seconds
        if attrs:
            self.attrs[node] = attrs

    def finish(self, keep: bool) -> None:
        """Fold this step's seconds into the cost model; ``keep`` it for `write`."""
        for n, s in self.seconds.items():
            self.cost[n] += SMOOTHING * (s - self.cost[n])
        if keep:
            self.last = {"step": self.step, "kind": self.kind, "seconds": dict(self.seconds),
                         "attrs": {k: dict(v) for k, v in self.attrs.items()}}

    def deadlines(self) -> dict[int, float]:
        """Per MoE layer, seconds from the step's start until its route node may start
        (longest path over the average costs): its experts must have landed by then."""
        start: dict[str, float] = {}
        for n in self.order:
            start[n] = max((start[p] + self.cost[p] for p in self.preds[n]), default=0.0)
        return {layer: start[f"L{layer}.route"] for layer in self.layers}

    def by_deadline(self, order: Sequence[Key], slots: int) -> list[Key]:
        """A prefetch order with the experts needed first landing first (`deadline_order`)."""
        return deadline_order(list(order), slots, self.deadlines())

    # ---- output ----------------------------------------------------------------------------
    def snapshot(self) -> nx.DiGraph:
        """The kept step as a graph: seconds and attributes per node, plus slot edges (a
        fetch that evicted an expert waits for that expert's last fast run)."""
        if self.last is None:
            raise ValueError("no step has finished yet")
        g = self.graph.copy()
        for n in g.nodes:
            g.nodes[n]["seconds"] = self.last["seconds"][n]
            g.nodes[n].update(self.last["attrs"].get(n, {}))
        for n, attrs in self.last["attrs"].items():
            here = int(n[1:].split(".")[0]) if n.startswith("L") else -1
            for layer in attrs.get("evicts_from_layers", ()):
                if layer < here:              # a victim of a later layer ran in an earlier step
                    g.add_edge(f"L{layer}.fast", n)
        return g

    def critical_path(self) -> tuple[list[str], float]:
        g = self.snapshot()
        for a, b in g.edges():
            g.edges[a, b]["w"] = g.nodes[b]["seconds"]
        path = nx.dag_longest_path(g, weight="w")
        return path, sum(g.nodes[n]["seconds"] for n in path)

    def write(self, path: Path) -> None:
        g = self.snapshot()
        crit, seconds = self.critical_path()
        if str(path).endswith(".dot"):
            lines = [f"digraph step{self.last['step']} {{", "  rankdir=LR;"]
            for n, d in g.nodes(data=True):
                style = ", style=bold, color=red" if n in crit else ""
                lines.append(f'  "{n}" [label="{n}\\n{d["lane"]} {d["seconds"] * 1e6:.0f} us"{style}];')
            lines += [f'  "{a}" -> "{b}";' for a, b in g.edges()]
            lines.append("}")
            Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
            return
        data = nx.node_link_data(g, edges="edges")
        data.update(step=self.last["step"], kind=self.last["kind"], critical_path=crit,
                    critical_path_seconds=seconds)
        Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
