"""What a `tunegraph run` does, decided from what Dagster knows: a pure function, tested alone.

Inputs are plain data read from the Dagster instance by the runner: which assets (and which of
their partitions) Dagster reports stale or missing, and which blocking checks did not pass on
their asset's latest materialisation. Dagster marks an asset stale only when one of its own
inputs changed (code version, a config key it reads, a dependency's data version), so the plan
also takes everything downstream of what will run: it runs on the data being rebuilt now.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Graph:
    """The asset graph as names: dependency order, each asset's parents, the partitioned ones."""

    order: list[str]  # topological
    parents: dict[str, set[str]]
    partitioned: set[str]  # by landing file
    by_variant: set[str] = field(
        default_factory=set
    )  # by prompt variant: a run per partition, after their inputs

    def ancestors(self, asset: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.parents.get(asset, ()))
        while todo:
            parent = todo.pop()
            if parent not in seen:
                seen.add(parent)
                todo.extend(self.parents.get(parent, ()))
        return seen

    def descendants(self, assets: Iterable[str]) -> set[str]:
        found = set(assets)
        for name in self.order:  # parents come first, so one pass finds every descendant
            if self.parents.get(name, set()) & found:
                found.add(name)
        return found - set(assets)


@dataclass(frozen=True)
class Failed:
    """A blocking check that did not pass on its asset's latest materialisation."""

    name: str  # asset:check
    detail: str
    not_run: bool  # never evaluated on that materialisation (rather than failed)


@dataclass
class Plan:
    partitions: dict[str, list[str]] = field(default_factory=dict)  # landing partition -> assets, in order
    assets: list[str] = field(default_factory=list)  # unpartitioned assets, in dependency order
    blocked: dict[str, list[Failed]] = field(default_factory=dict)  # asset -> the gates that stop it
    variants: dict[str, list[str]] = field(default_factory=dict)  # by-variant asset -> partitions to run
    after_variants: list[str] = field(default_factory=list)  # assets of `assets` that read those partitions

    @property
    def empty(self) -> bool:
        return not self.partitions and not self.assets and not self.variants


def plan_run(
    graph: Graph,
    stale: dict[str, set[str | None]],
    partitions: list[str],
    failed_gates: dict[str, list[Failed]],
    select: set[str] | None = None,
    full: bool = False,
    variant_keys: dict[str, list[str]] | None = None,
) -> Plan:
    """The assets (and partitions) to materialise, and those a failed gate upstream holds back.

    - `stale`: asset -> partition keys (None when unpartitioned) Dagster reports stale or missing;
    - `variant_keys`: each by-variant asset's partitions (all of them run when an input reruns);
    - `failed_gates`: asset -> its blocking checks that did not pass on its latest materialisation;
    - `select` limits the run to those assets; `full` redoes them whether stale or not.
    An asset whose own gate never ran on its latest materialisation is rerun (that runs the gate);
    one whose gate failed stays as it is until its inputs change.
    """
    chosen = set(graph.order) if select is None else set(select)
    unknown = chosen - set(graph.order)
    if unknown:
        raise ValueError(f"unknown assets {sorted(unknown)}; the graph has {', '.join(graph.order)}")

    by_partition: dict[str, set[str]] = {}
    for key in partitions:
        here = {a for a in graph.partitioned if full or key in stale.get(a, set())}
        here |= {d for d in graph.descendants(here) if d in graph.partitioned}
        if here & chosen:
            by_partition[key] = here & chosen
    keys = variant_keys or {}
    todo = {a for a in graph.order if a not in graph.partitioned | graph.by_variant
            and (full or None in stale.get(a, set()))}  # fmt: skip
    todo |= {a for a, gates in failed_gates.items() if any(g.not_run for g in gates)}
    variants = {a: set(keys.get(a, [])) if full else stale.get(a, set()) - {None} for a in graph.by_variant}
    todo |= graph.descendants(todo | {a for assets in by_partition.values() for a in assets}
                              | {a for a, ks in variants.items() if ks})  # fmt: skip
    for asset in graph.by_variant & todo:  # an input reruns: every partition will be stale
        variants[asset] = set(keys.get(asset, []))
    todo = {a for a in todo if a not in graph.partitioned | graph.by_variant} & chosen
    variants = {a: ks for a, ks in variants.items() if ks and a in chosen}

    plan = Plan()
    for asset in [
        a for a in graph.order if a in todo or a in variants or any(a in s for s in by_partition.values())
    ]:
        held = [g for parent in sorted(graph.ancestors(asset)) if parent not in todo
                for g in failed_gates.get(parent, [])]  # fmt: skip
        if held:
            plan.blocked[asset] = held
    plan.assets = [a for a in graph.order if a in todo and a not in plan.blocked]
    plan.variants = {a: sorted(variants[a]) for a in graph.order if a in variants and a not in plan.blocked}
    plan.after_variants = [a for a in plan.assets if a in graph.descendants(plan.variants)]
    plan.partitions = {
        key: [a for a in graph.order if a in assets and a not in plan.blocked]
        for key, assets in sorted(by_partition.items())
        if assets - set(plan.blocked)
    }
    return plan


def run_order(graph: Graph, plan: Plan) -> list[tuple[list[str], str | None]]:
    """The plan's cross-file part as runs, in order: (assets, None) for unpartitioned assets together,
    (asset, partition) for each by-variant partition once its inputs are done. A job holds one
    partitions definition, hence a run per partition; the unpartitioned assets that need none of
    them share one run before, the rest one run after."""
    pending, variants, runs = list(plan.assets), dict(plan.variants), []
    while pending or variants:
        waiting = set(pending) | set(variants)
        ready = [a for a in variants if not graph.ancestors(a) & (waiting - {a})]
        if ready:
            for asset in ready:
                runs += [([asset], key) for key in variants.pop(asset)]
            continue
        group = [a for a in pending if not graph.ancestors(a) & set(variants)]
        if not group:
            raise ValueError(f"no order runs {pending} and {list(variants)}: the graph has a cycle")
        runs.append((group, None))
        pending = [a for a in pending if a not in group]
    return runs


def retrain(plan: Plan, model: str) -> tuple[list[str], str]:
    """What a scheduled retrain materialises (nothing, with the reason, when it is not due).

    Due when `model` is stale and no gate holds it back. Landing files still to be read come
    first (`unread_partitions`), so a model never trains on a half-updated corpus.
    """
    if plan.partitions:
        return (
            [],
            f"landing files not yet read and cleaned: {', '.join(plan.partitions)} (they are read first)",
        )
    if model in plan.blocked:
        return [], "blocking checks did not pass: " + "; ".join(
            f"{g.name} {g.detail}" for g in plan.blocked[model]
        )
    if model not in plan.assets:
        return [], f"{model} is up to date with its data, config and code"
    # A scheduled run holds one partitions definition: what reads the prompt partitions waits for
    # `tunegraph run` (which scores them first), rather than comparing the new model with old scores.
    assets = [a for a in plan.assets if a not in plan.after_variants]
    waiting = (
        f"; {', '.join(plan.after_variants)} wait for the prompt partitions (`tunegraph run`)"
        if plan.after_variants
        else ""
    )
    return assets, f"{model} is stale: materialising {', '.join(assets)}{waiting}"


def unread_partitions(plan: Plan, being_read: set[str]) -> dict[str, list[str]]:
    """Landing partitions to read now (partition -> assets): stale, and no unfinished run reads them.

    The landing sensor requests each change it observes; what it never will (a run that failed,
    a request lost after its observation was recorded, a partition made stale by code or config)
    is requested by whoever asks this, so nothing waits for ever on the sensor.
    """
    return {key: assets for key, assets in plan.partitions.items() if key not in being_read}
