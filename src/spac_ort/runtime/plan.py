r"""The step plan: a networkx DiGraph of one decoding step's work.

Nodes are work items on a lane (``host``: attention/router/combine, ``fast``: fetches and
expert runs on the fast tier, ``slow``: expert runs on the CPU); edges are data and slot
dependencies (a fetch that evicts an expert depends on that expert's last run). Layers
are added as the step proceeds (routing is known only after each router). `run` executes
a set of nodes in dependency order, one thread per lane, so a layer's fast and slow
branches run concurrently. The finished graph gives the critical path, and can be written
as JSON or DOT for inspection.

    L3.route --> L3.fetch.e17 --> L3.fast --\
            \--> L3.slow -------------------> L3.combine --> L4.route ...
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import networkx as nx

Work = Callable[[], None]


class StepPlan:
    def __init__(self) -> None:
        self.graph = nx.DiGraph()
        self.step = 0
        self._work: dict[str, Work] = {}

    def reset(self, step: int) -> None:
        self.graph = nx.DiGraph()
        self._work.clear()
        self.step = step

    def add(self, name: str, lane: str, work: Optional[Work] = None, deps: Iterable[str] = (), **attrs) -> str:
        self.graph.add_node(name, lane=lane, seconds=0.0, **attrs)
        for dep in deps:
            if dep in self.graph:
                self.graph.add_edge(dep, name)
        if work is not None:
            self._work[name] = work
        return name

    def record(self, name: str, lane: str, seconds: float, deps: Iterable[str] = (), **attrs) -> str:
        """Add a node for work that already ran (measured elsewhere)."""
        self.add(name, lane, None, deps, **attrs)
        self.graph.nodes[name]["seconds"] = seconds
        return name

    def run(self, names: list[str]) -> None:
        """Execute these nodes respecting edges among them; lanes run concurrently."""
        sub = self.graph.subgraph(names)
        order = list(nx.topological_sort(sub))
        lanes: dict[str, list[str]] = {}
        for n in order:
            lanes.setdefault(self.graph.nodes[n]["lane"], []).append(n)
        done = {n: threading.Event() for n in order}
        errors: list[BaseException] = []

        def run_lane(nodes: list[str]) -> None:
            for n in nodes:
                for dep in sub.predecessors(n):
                    done[dep].wait()
                if errors:
                    done[n].set()
                    continue
                t0 = time.perf_counter()
                try:
                    work = self._work.pop(n, None)
                    if work is not None:
                        work()
                except BaseException as exc:  # re-raised in the caller
                    errors.append(exc)
                self.graph.nodes[n]["seconds"] = time.perf_counter() - t0
                done[n].set()

        groups = list(lanes.values())
        threads = [threading.Thread(target=run_lane, args=(g,), daemon=True) for g in groups[1:]]
        for t in threads:
            t.start()
        if groups:
            run_lane(groups[0])
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def critical_path(self) -> tuple[list[str], float]:
        g = nx.DiGraph()
        g.add_node("start")
        for n, data in self.graph.nodes(data=True):
            if self.graph.in_degree(n) == 0:
                g.add_edge("start", n, w=data["seconds"])
        for a, b in self.graph.edges():
            g.add_edge(a, b, w=self.graph.nodes[b]["seconds"])
        path = nx.dag_longest_path(g, weight="w")
        seconds = sum(self.graph.nodes[n]["seconds"] for n in path if n != "start")
        return [n for n in path if n != "start"], seconds

    def write(self, path: Path) -> None:
        crit, seconds = self.critical_path()
        if str(path).endswith(".dot"):
            lines = [f"digraph step{self.step} {{", "  rankdir=LR;"]
            for n, d in self.graph.nodes(data=True):
                style = ", style=bold, color=red" if n in crit else ""
                lines.append(f'  "{n}" [label="{n}\\n{d["lane"]} {d["seconds"] * 1e6:.0f} us"{style}];')
            lines += [f'  "{a}" -> "{b}";' for a, b in self.graph.edges()]
            lines.append("}")
            Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
            return
        data = nx.node_link_data(self.graph, edges="edges")
        data["step"] = self.step
        data["critical_path"] = crit
        data["critical_path_seconds"] = seconds
        Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
