"""Proposals: where on the shares simplex to look next, in rounds.

A proposer answers `propose(round, count)` with `count` points of the simplex and is told, through
`tell(shares, values)`, the *realized* shares of every network trained and how it did. A round is
proposed only after every trial of the rounds before it has finished, from those results alone, so
proposals never depend on which worker finished first: the same seed gives the same proposals at
any concurrency.

Samplers live in one table (`SAMPLERS`): name → factory, and what each supports. Adding one means
an entry here and a test (CONTRIBUTING.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from scalesearch.core.errors import UserError
from scalesearch.core.scaling import Shares

# Seeds of the samplers of successive rounds: seed·SEED_STRIDE + round.
SEED_STRIDE = 100_003
# The first round of a study: the corners of the simplex (depth, width, resolution only), then its centre.
# Where a result at the depth corner is recorded along its degenerate edge (width_part).
CORNER_EDGE = (0.0, 0.25, 0.5, 0.75, 1.0)
INITIAL_DESIGN = [Shares(1.0, 0.0, 0.0), Shares(0.0, 1.0, 0.0), Shares(0.0, 0.0, 1.0), Shares(1 / 3, 1 / 3, 1 / 3)]


class Proposer(Protocol):
    """What the search asks of a sampler."""

    def propose(self, round_number: int, count: int) -> list[Shares]:
        """`count` points of the simplex for round `round_number`."""
        ...

    def tell(self, shares: Shares, values: Sequence[float] | None) -> None:
        """A network with realized `shares` scored `values` ([accuracy] or [accuracy, cost]); None: failed."""
        ...


@dataclass(frozen=True)
class SamplerKind:
    """One entry of the sampler table."""

    name: str
    description: str
    multi_objective: bool  # can trade accuracy against a cost (--objective accuracy,COST)
    make: Callable[[int, int], Any] | None  # (seed, trials) -> an Optuna sampler; None for the grid


def _tpe(seed: int, trials: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=4,  # the first round (corners and centre) is the start-up design
        multivariate=True,
        constant_liar=True,  # the rest of a round is pending: do not propose the same point twice
    )


def _gp(seed: int, trials: int) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4)


def _random(seed: int, trials: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS: dict[str, SamplerKind] = {
    "grid": SamplerKind("grid", "the realizable set itself, spread evenly over the simplex", True, None),
    "tpe": SamplerKind("tpe", "Optuna's multivariate TPE with constant liar", True, _tpe),
    "gp": SamplerKind("gp", "Optuna's Gaussian-process sampler", True, _gp),
    "random": SamplerKind("random", "uniform on the simplex", True, _random),
}


def sampler_kind(name: str) -> SamplerKind:
    """The sampler `name`; UserError listing the known ones otherwise."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


def check_sampler(name: str, *, objectives: int) -> None:
    """UserError unless the sampler `name` exists and optimizes `objectives` (1 or 2) objectives."""
    if objectives > 1 and not sampler_kind(name).multi_objective:
        raise UserError(f"sampler {name!r} cannot optimize two objectives")
    sampler_kind(name)


class GridProposer:
    """Walks a fixed list of points (the realizable networks' shares, spread evenly), in order: a
    round starts after the points of the trials told so far (every trial of every earlier round is
    told, so a short last round continues the walk instead of repeating points)."""

    def __init__(self, points: Sequence[Shares]) -> None:
        self.points = list(points)
        self.told = 0

    def propose(self, round_number: int, count: int) -> list[Shares]:
        return self.points[self.told : self.told + count]

    def tell(self, shares: Shares, values: Sequence[float] | None) -> None:
        """The grid does not learn; it counts the trials behind it."""
        self.told += 1


class StudyProposer:
    """An Optuna sampler over two exact coordinates of the simplex (stick-breaking: the depth share,
    then width's part of the rest). Each round builds a fresh study from the realized results told
    so far and asks `count` points of it, with a sampler seeded by (seed, round)."""

    def __init__(self, kind: SamplerKind, *, seed: int, trials: int, directions: int = 1, verbose: bool = False):
        if kind.make is None:
            raise ValueError(f"{kind.name} is not an Optuna sampler")
        self.kind = kind
        self.seed = seed
        self.trials = trials
        self.directions = directions
        self.verbose = verbose
        self.told: list[tuple[dict[str, float], list[float] | None]] = []

    def tell(self, shares: Shares, values: Sequence[float] | None) -> None:
        scores = None if values is None else [float(v) for v in values]
        if shares.depth >= 1.0 - 1e-9:
            # The depth corner is one network for every width_part: say so along the whole edge, or a
            # model-based sampler sees the rest of the edge as unexplored and keeps proposing it.
            self.told.extend((share_params(shares, part), scores) for part in CORNER_EDGE)
            return
        self.told.append((share_params(shares), scores))

    def propose(self, round_number: int, count: int) -> list[Shares]:

        if round_number == 0 and not self.told:
            # The first round measures the simplex's extent: the three single-dimension corners and the
            # centre. The sampler's model then starts from the whole simplex, and an answer in a corner
            # (where stick-breaking coordinates leave random draws little room) is never missed.
            return INITIAL_DESIGN[:count] + self._ask(round_number, max(0, count - len(INITIAL_DESIGN)))
        return self._ask(round_number, count)

    def _ask(self, round_number: int, count: int) -> list[Shares]:
        import optuna

        if count == 0:
            return []
        optuna.logging.set_verbosity(optuna.logging.DEBUG if self.verbose else optuna.logging.WARNING)
        directions: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"]
        assert self.kind.make is not None
        study = optuna.create_study(
            directions=directions[: self.directions],
            sampler=self.kind.make(self.seed * SEED_STRIDE + round_number, self.trials),
        )
        for params, values in self.told:
            state = optuna.trial.TrialState.COMPLETE if values is not None else optuna.trial.TrialState.FAIL
            study.add_trial(
                optuna.trial.create_trial(
                    params=params, distributions=share_distributions(), values=values, state=state
                )
            )
        return [params_to_shares(study.ask(share_distributions()).params) for _ in range(count)]


def make_proposer(
    sampler: str,
    *,
    seed: int,
    trials: int,
    grid_points: Sequence[Shares] = (),
    directions: int = 1,
    verbose: bool = False,
) -> Proposer:
    """The proposer for `sampler` (grid: walks `grid_points`)."""
    kind = sampler_kind(sampler)
    if kind.make is None:
        return GridProposer(grid_points)
    return StudyProposer(kind, seed=seed, trials=trials, directions=directions, verbose=verbose)


def share_distributions() -> dict[str, Any]:
    """Two free coordinates of the shares simplex: the depth share, and width's part of the rest."""
    import optuna

    return {
        "share_depth": optuna.distributions.FloatDistribution(0.0, 1.0),
        "width_part": optuna.distributions.FloatDistribution(0.0, 1.0),
    }


def params_to_shares(params: dict[str, float]) -> Shares:
    """Area-preserving stick-breaking: s_d = 1 - √(1 - p), then s_w = (1 - s_d)·u, s_r = the rest, so
    uniform (p, u) in the unit square are uniform on the simplex (plain s_d = p would put half of
    all draws at depth shares above 0.5, a quarter of the simplex)."""
    depth = 1.0 - math.sqrt(max(0.0, 1.0 - float(params["share_depth"])))
    width = (1.0 - depth) * float(params["width_part"])
    return Shares(depth, width, max(0.0, 1.0 - depth - width))


def share_params(shares: Shares, width_part: float | None = None) -> dict[str, float]:
    """Inverse of params_to_shares. At the depth corner every `width_part` is the same point; pass
    the one to record (default 0)."""
    rest = 1.0 - min(1.0, max(0.0, shares.depth))
    if rest <= 1e-9:
        return {"share_depth": 1.0, "width_part": 0.0 if width_part is None else width_part}
    return {"share_depth": 1.0 - rest**2, "width_part": min(1.0, max(0.0, shares.width / rest))}
