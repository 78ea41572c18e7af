"""Load and validate the collector's TOML configuration once; headway.example.toml
documents every key.

`load(path)` turns the file into typed, immutable objects or raises `ConfigError`, whose
message is one line: file, line where known, and reason. Nothing else reads the file.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from headway.wire import LEVELS, MAX_WEIGHT, QUADRANTS, TRANSITION_TYPES, TRENDS, Level

__all__ = [
    "Config",
    "ConfigError",
    "Criterion",
    "Engagement",
    "Milestone",
    "Project",
    "Stage",
    "Webhook",
    "load",
    "loads",
    "parse_duration",
]

US = 1_000_000
_UNITS = {"s": US, "m": 60 * US, "h": 3600 * US, "d": 86400 * US}
MAX_DURATION = 36_500 * _UNITS["d"]  # deadlines stay within the calendar
_DURATION = re.compile(r"(\d+)([smhd])")
_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")
KINDS = ("count", "sum", "distinct", "tagged", "rate")
# The new values of the transitions that a webhook's `to` filters (stage names come from the model).
TO_VALUES = {
    "quadrant.changed": QUADRANTS,
    "trend.changed": TRENDS,
}


class ConfigError(Exception):
    """A configuration file was refused; ``str()`` is the one line to show."""

    def __init__(self, path: str, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = path, line, reason


def parse_duration(text: str) -> int:
    """'90s', '24h', '14d' -> microseconds. Raises ValueError with the reason."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"malformed duration {text!r} (want an integer and a unit s, m, h or d, e.g. '24h')")
    n = int(m.group(1)) * _UNITS[m.group(2)]
    if n <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    if n > MAX_DURATION:
        raise ValueError(f"duration {text!r} is over 100 years")
    return n


# --- typed configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    kind: Literal["count", "sum", "distinct", "tagged", "rate"]
    target: float
    event: str | None = None
    of: str | None = None  # distinct: a property name, or "user_id"
    over: int | None = None  # rate: trailing window, microseconds

    @functools.cached_property  # read on every fold of the criterion
    def keep(self) -> int:
        """How many earliest items the incremental state keeps to know when the target was met."""
        days = self.over // _UNITS["d"] if self.kind == "rate" and self.over else 1
        return max(1, math.ceil(self.target * max(1, days)))


@dataclass(frozen=True)
class Milestone:
    name: str
    stage: str
    level: Level
    criteria: tuple[Criterion, ...]
    within: int | None = None  # microseconds from the subject's first event
    recurring: int | None = None  # microseconds: judged over the trailing window (t - recurring, t]


@dataclass(frozen=True)
class Stage:
    name: str
    after: int | None = None  # microseconds of subject age
    on: str | None = None  # a milestone name


@dataclass(frozen=True)
class Engagement:
    half_life: int = 7 * 86400 * US
    trend_short: int = 3 * 86400 * US
    trend_long: int = 30 * 86400 * US
    default_weight: float = 1.0
    engaged_threshold: float = 20.0
    new_for: int = 86400 * US  # younger subjects read quadrant "new" (0: never)


@dataclass(frozen=True)
class Webhook:
    """`[[projects.NAME.webhooks]]`: the transitions of types `on` are POSTed to `url`, signed with
    `secret`; `level`, `milestones` and `to` (None: not given) narrow them, so that it serves as an
    alert. Each filter concerns the transitions it names and lets the others through: `milestones`
    the milestone transitions, `to` those with a new value (stage, quadrant, trend)."""

    project: str
    url: str
    secret: str = field(repr=False)
    on: tuple[str, ...]
    level: str | None = None
    milestones: frozenset[str] | None = None
    to: frozenset[str] | None = None

    @property
    def hook(self) -> str:
        """Its name in the delivery tables: the same while its project, URL, types and filters stay
        (a webhook without filters keeps the name it had before filters existed)."""
        ident: list[Any] = [self.project, self.url, sorted(self.on)]
        if self.level is not None or self.milestones is not None or self.to is not None:
            ident.append([self.level, sorted(self.milestones or ()), sorted(self.to or ())])
        return hashlib.sha256(msgspec.json.encode(ident)).hexdigest()[:16]

    def sends(self, kind: str, level: str, data: Mapping[str, Any]) -> bool:
        """Whether a transition goes to this webhook: its type is in `on` and it passes every filter."""
        if kind not in self.on or (self.level is not None and level != self.level):
            return False
        if (
            self.milestones is not None
            and kind.startswith("milestone.")
            and data.get("milestone") not in self.milestones
        ):
            return False
        return self.to is None or "to" not in data or data["to"] in self.to


@dataclass(frozen=True)
class Project:
    name: str
    write_keys: frozenset[str]
    read_keys: frozenset[str]
    engagement: Engagement = field(default_factory=Engagement)
    weights: dict[str, float] = field(default_factory=dict)
    nps_event: str | None = None
    revenue_event: str | None = None  # its value: the account's MRR from then on
    stages: tuple[Stage, ...] = ()
    milestones: tuple[Milestone, ...] = ()
    model: dict[str, Any] = field(default_factory=dict)  # as written, for GET /v1/model
    version: str = ""
    webhooks: tuple[Webhook, ...] = ()  # not part of the model: changing them re-scores nothing

    def weight(self, event: str, own: float | None) -> float:
        """Model weight > the event's own weight > default_weight."""
        w = self.weights.get(event)
        if w is not None:
            return w
        return own if own is not None else self.engagement.default_weight

    def milestones_at(self, level: str) -> tuple[Milestone, ...]:
        return tuple(m for m in self.milestones if m.level == level)

    def stage_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.stages) if s.name == name)


@dataclass(frozen=True)
class Config:
    projects: dict[str, Project]
    path: str = "<config>"
    text: str = ""  # the file as read: a model generation keeps it, to serve that model after the file changed

    def project_for_key(self, key_hash: str, kind: Literal["write", "read"]) -> Project | None:
        """Key hashes are unique across projects (checked at load), so at most one matches."""
        found = None
        for project in self.projects.values():
            for known in project.write_keys if kind == "write" else project.read_keys:
                # Compare every key, whatever matched earlier: time does not depend on the key.
                if hmac.compare_digest(known, key_hash):
                    found = project
        return found


# --- raw shapes: msgspec checks types and unknown keys, with a path to the offence --------------


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class _RawCriterion(_Strict):
    kind: str
    target: float
    event: str | None = None
    of: str | None = None
    over: str | None = None


class _RawMilestone(_Strict):
    name: str
    stage: str
    level: str
    criteria: list[_RawCriterion]
    within: str | None = None
    recurring: str | None = None


class _RawStage(_Strict):
    name: str
    after: str | None = None
    on: str | None = None


class _RawEngagement(_Strict):
    half_life: str = "7d"
    trend: list[str] = msgspec.field(default_factory=lambda: ["3d", "30d"])
    default_weight: float = 1.0
    engaged_threshold: float = 20.0
    new_for: str = "1d"


class _RawNPS(_Strict):
    event: str


class _RawWebhook(_Strict):
    url: str
    secret: str
    on: list[str]
    level: str | None = None
    milestones: list[str] | None = None
    to: list[str] | None = None


class _RawRevenue(_Strict):
    event: str


class _RawProject(_Strict):
    write_keys: list[str] = []
    read_keys: list[str] = []
    engagement: _RawEngagement = msgspec.field(default_factory=_RawEngagement)
    weights: dict[str, float] = {}
    nps: _RawNPS | None = None
    revenue: _RawRevenue | None = None
    stages: list[_RawStage] = []
    milestones: list[_RawMilestone] = []
    webhooks: list[_RawWebhook] = []


# --- loading ------------------------------------------------------------------------------------


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), f"cannot read the file: {getattr(exc, 'strerror', None) or exc}") from None
    return loads(text, str(p))


def loads(text: str, path: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(path, f"not valid TOML: {reason}", int(m.group(1)) if m else None) from None
    projects = data.get("projects")
    if not isinstance(projects, dict) or not projects:
        raise ConfigError(path, "no [projects.<name>] table: at least one project is needed")
    unknown = sorted(set(data) - {"projects"})
    if unknown:
        raise ConfigError(
            path, f"unknown top-level key {unknown[0]!r} (only [projects.<name>] tables)", _locate(text, [unknown[0]])
        )
    raw: dict[str, _RawProject] = {}
    for name, body in projects.items():
        try:
            raw[name] = msgspec.convert(body, _RawProject)
        except msgspec.ValidationError as exc:
            raise _shape_error(text, path, ["projects", name], body, str(exc)) from None
    return _Builder(text, path).config(raw, projects)


def _shape_error(text: str, path: str, at: list[str | int], body: Any, msg: str) -> ConfigError:
    """Turn msgspec's 'Expected X - at `$.a[0].b`' into the dotted key and its line."""
    where = re.search(r" - at `\$(.*)`$", msg)
    reason = msg[: where.start()] if where else msg
    loc: list[str | int] = list(at)
    node = body
    for m in re.finditer(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\[\.\.\.\]", where.group(1) if where else ""):
        if m.group(1) is not None:
            part: str | int = m.group(1)
        elif m.group(2) is not None:
            part = int(m.group(2))
        else:  # msgspec hides dict keys: the offending one is the first whose value is not a number
            part = next((k for k, v in node.items() if not isinstance(v, (int, float)) or isinstance(v, bool)), "?")
        loc.append(part)
        if isinstance(node, dict) and part != "?":
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    unknown = re.search(r"unknown field `([^`]+)`", reason)
    if unknown:
        loc.append(unknown.group(1))
    dotted = ".".join(str(x) for x in loc)
    return ConfigError(path, f"{dotted}: {reason}", _locate(text, loc))


def _locate(text: str, loc: list[str | int]) -> int | None:
    """Best-effort line of a value at a path: tomllib gives no positions, so read the text.

    Walks table headers ([a.b] and [[a.b]], counting array entries), then looks for the last key
    inside that table's block; for an index into an inline array, the n-th '{' after that key.
    """
    lines = text.splitlines()
    table: list[str] = []
    counts: dict[str, int] = {}
    blocks: list[tuple[tuple[str | int, ...], int]] = [((), 0)]
    header = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    for i, line in enumerate(lines):
        m = header.match(line)
        if not m:
            continue
        name = m.group(2)
        table = [s.strip().strip('"') for s in name.split(".")]
        key: tuple[str | int, ...] = tuple(table)
        if m.group(1) == "[[":
            counts[name] = counts.get(name, -1) + 1
            key = key + (counts[name],)
        blocks.append((key, i))
    # The deepest header that is a prefix of the path; then search its block.
    best: tuple[str | int, ...] = ()
    start = 0
    for key, i in blocks:
        if tuple(loc[: len(key)]) == key and len(key) >= len(best):
            best, start = key, i
    rest = [x for x in loc[len(best) :]]
    end = next((i for k, i in blocks if i > start), len(lines))
    line_no: int | None = start + 1 if best else None
    pos = start
    for part in rest:
        if isinstance(part, str):
            pat = re.compile(rf"(^|[\s{{,])\"?{re.escape(part)}\"?\s*=")
            hit = next((i for i in range(pos, end) if pat.search(lines[i])), None)
            if hit is None:
                break
            pos, line_no = hit, hit + 1
        else:
            seen = -1
            for i in range(pos, end):
                seen += lines[i].count("{")
                if seen >= part:
                    pos, line_no = i, i + 1
                    break
    return line_no


class _Builder:
    """Semantic checks after the shape is right; every refusal names the line it can find."""

    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path

    def fail(self, loc: list[str | int], reason: str) -> ConfigError:
        return ConfigError(self.path, reason, _locate(self.text, loc))

    def duration(self, loc: list[str | int], value: str) -> int:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self.fail(loc, f"{'.'.join(map(str, loc))}: {exc}") from None

    def finite(self, loc: list[str | int], value: float) -> float:
        if not math.isfinite(value):
            raise self.fail(loc, f"{loc[-1]} must be a finite number, got {value}")
        return value

    def weight(self, loc: list[str | int], value: float) -> float:
        """A weight: finite and within ±1e6, as an event's own `weight` in a batch."""
        if not -MAX_WEIGHT <= self.finite(loc, value) <= MAX_WEIGHT:
            raise self.fail(loc, f"{loc[-1]} = {value:g}: weights lie within ±{MAX_WEIGHT:g}")
        return value

    def config(self, raw: dict[str, _RawProject], data: dict[str, Any]) -> Config:
        seen_keys: dict[str, str] = {}
        projects = {}
        for name, rp in raw.items():
            projects[name] = self.project(name, rp, data[name], seen_keys)
        return Config(projects=projects, path=self.path, text=self.text)

    def project(self, name: str, rp: _RawProject, data: dict[str, Any], seen_keys: dict[str, str]) -> Project:
        at: list[str | int] = ["projects", name]
        for kind in ("write_keys", "read_keys"):
            for i, k in enumerate(getattr(rp, kind)):
                if not _KEY_HASH.fullmatch(k):
                    raise self.fail(
                        at + [kind],
                        f"{kind}[{i}] must be 'sha256:' and 64 lowercase hex digits "
                        "(`headway-collector keys new` prints one)",
                    )
                if k in seen_keys:
                    raise self.fail(
                        at + [kind],
                        f"{kind}[{i}] is listed twice (also in {seen_keys[k]}); "
                        "a key belongs to one project and one kind",
                    )
                seen_keys[k] = f"projects.{name}.{kind}"
        e = rp.engagement
        eng_at = at + ["engagement"]
        if len(e.trend) != 2:
            raise self.fail(eng_at + ["trend"], "engagement.trend must be two durations: [short, long]")
        short, long_ = (self.duration(eng_at + ["trend"], d) for d in e.trend)
        if short >= long_:
            raise self.fail(eng_at + ["trend"], "engagement.trend: the short half-life must be less than the long one")
        engagement = Engagement(
            half_life=self.duration(eng_at + ["half_life"], e.half_life),
            trend_short=short,
            trend_long=long_,
            default_weight=self.weight(eng_at + ["default_weight"], e.default_weight),
            engaged_threshold=self.finite(eng_at + ["engaged_threshold"], e.engaged_threshold),
            new_for=0 if e.new_for == "0s" else self.duration(eng_at + ["new_for"], e.new_for),
        )
        weights = {k: self.weight(at + ["weights", k], v) for k, v in rp.weights.items()}
        stages = self.stages(at, rp.stages)
        milestones = self.milestones(at, rp.milestones, stages)
        self.check_stage_triggers(at, stages, milestones)
        webhooks = self.webhooks(name, at, rp.webhooks, stages, milestones)
        if rp.revenue is not None and not rp.revenue.event:
            raise self.fail(at + ["revenue", "event"], "revenue.event must name the event that carries the MRR")
        model = {k: v for k, v in data.items() if k not in ("write_keys", "read_keys", "webhooks")}
        version = hashlib.sha256(msgspec.json.encode(model, order="sorted")).hexdigest()[:16]
        return Project(
            name=name,
            write_keys=frozenset(rp.write_keys),
            read_keys=frozenset(rp.read_keys),
            engagement=engagement,
            weights=weights,
            nps_event=rp.nps.event if rp.nps else None,
            revenue_event=rp.revenue.event if rp.revenue else None,
            stages=stages,
            milestones=milestones,
            model=model,
            version=version,
            webhooks=webhooks,
        )

    def webhooks(
        self,
        project: str,
        at: list[str | int],
        raw: list[_RawWebhook],
        stages: tuple[Stage, ...],
        milestones: tuple[Milestone, ...],
    ) -> tuple[Webhook, ...]:
        out: list[Webhook] = []
        for i, w in enumerate(raw):
            loc = at + ["webhooks", i]
            parsed = urlsplit(w.url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise self.fail(
                    loc + ["url"], f"webhooks[{i}].url must be an http:// or https:// URL with a host; got {w.url!r}"
                )
            if not w.secret:
                raise self.fail(loc + ["secret"], f"webhooks[{i}].secret must not be empty (it signs every delivery)")
            if not w.on:
                raise self.fail(
                    loc + ["on"],
                    f"webhooks[{i}].on must name at least one type of transition: {', '.join(TRANSITION_TYPES)}",
                )
            for kind in w.on:
                if kind not in TRANSITION_TYPES:
                    raise self.fail(
                        loc + ["on"],
                        f"webhooks[{i}].on: unknown type of transition {kind!r} (one of {', '.join(TRANSITION_TYPES)})",
                    )
            hook = Webhook(
                project, w.url, w.secret, tuple(dict.fromkeys(w.on)), *self.filters(loc, i, w, stages, milestones)
            )
            if any(o.hook == hook.hook for o in out):
                raise self.fail(
                    loc + ["url"], f"webhooks[{i}] repeats an earlier webhook (same url, types and filters)"
                )
            out.append(hook)
        return tuple(out)

    def filters(
        self, loc: list[str | int], i: int, w: _RawWebhook, stages: tuple[Stage, ...], milestones: tuple[Milestone, ...]
    ) -> tuple[str | None, frozenset[str] | None, frozenset[str] | None]:
        """A webhook's `level`, `milestones` and `to`, each checked against its types and the model:
        a filter that could never let a transition of `on` through is a mistake, refused here."""
        if w.level is not None and w.level not in LEVELS:
            raise self.fail(loc + ["level"], f"webhooks[{i}].level must be 'user' or 'account', not {w.level!r}")
        if w.milestones is not None:
            if not any(kind.startswith("milestone.") for kind in w.on):
                raise self.fail(
                    loc + ["milestones"], f"webhooks[{i}].milestones filters milestone transitions: none is in 'on'"
                )
            names = {m.name for m in milestones if w.level is None or m.level == w.level}
            for name in w.milestones:
                if name not in names:
                    raise self.fail(
                        loc + ["milestones"],
                        f"webhooks[{i}].milestones: {name!r} is not a milestone of the model"
                        + (f" at level {w.level!r}" if w.level is not None else ""),
                    )
            if not w.milestones:
                raise self.fail(loc + ["milestones"], f"webhooks[{i}].milestones is empty: it would send none")
        if w.to is not None:
            values = {**TO_VALUES, "stage.entered": tuple(s.name for s in stages)}
            allowed = {v for kind in w.on for v in values.get(kind, ())}
            if not any(kind in values for kind in w.on):
                raise self.fail(
                    loc + ["to"],
                    f"webhooks[{i}].to filters stage, quadrant and trend transitions: none is in 'on'",
                )
            for value in w.to:
                if value not in allowed:
                    raise self.fail(
                        loc + ["to"],
                        f"webhooks[{i}].to: {value!r} is no new value of {', '.join(k for k in w.on if k in values)} "
                        f"(one of {', '.join(sorted(allowed))})",
                    )
            if not w.to:
                raise self.fail(loc + ["to"], f"webhooks[{i}].to is empty: it would send none")
        return (
            w.level,
            frozenset(w.milestones) if w.milestones is not None else None,
            frozenset(w.to) if w.to is not None else None,
        )

    def stages(self, at: list[str | int], raw: list[_RawStage]) -> tuple[Stage, ...]:
        out: list[Stage] = []
        last_after = 0
        for i, s in enumerate(raw):
            loc = at + ["stages", i]
            if not s.name:
                raise self.fail(loc + ["name"], "a stage needs a non-empty name")
            if any(o.name == s.name for o in out):
                raise self.fail(loc + ["name"], f"duplicate stage name {s.name!r}")
            if i == 0 and (s.after or s.on):
                raise self.fail(loc, f"the first stage {s.name!r} has no start: remove 'after' / 'on'")
            if i > 0 and (s.after is None) == (s.on is None):
                raise self.fail(
                    loc, f"stage {s.name!r} needs exactly one start: 'after' (an age) or 'on' (a milestone)"
                )
            after = self.duration(loc + ["after"], s.after) if s.after is not None else None
            if after is not None:
                if after <= last_after:
                    raise self.fail(loc + ["after"], f"stage {s.name!r}: 'after' must grow along the stages")
                last_after = after
            out.append(Stage(name=s.name, after=after, on=s.on))
        return tuple(out)

    def milestones(
        self, at: list[str | int], raw: list[_RawMilestone], stages: tuple[Stage, ...]
    ) -> tuple[Milestone, ...]:
        out: list[Milestone] = []
        stage_names = {s.name for s in stages}
        for i, m in enumerate(raw):
            loc = at + ["milestones", i]
            if not m.name:
                raise self.fail(loc + ["name"], "a milestone needs a non-empty name")
            if any(o.name == m.name for o in out):
                raise self.fail(loc + ["name"], f"duplicate milestone name {m.name!r}")
            if m.stage not in stage_names:
                raise self.fail(
                    loc + ["stage"],
                    f"milestone {m.name!r} names unknown stage {m.stage!r}"
                    + (f" (stages: {', '.join(sorted(stage_names))})" if stage_names else " (no stages are defined)"),
                )
            if m.level not in LEVELS:
                raise self.fail(
                    loc + ["level"], f"milestone {m.name!r}: level must be 'user' or 'account', not {m.level!r}"
                )
            if not m.criteria:
                raise self.fail(loc + ["criteria"], f"milestone {m.name!r} needs at least one criterion")
            if m.within is not None and m.recurring is not None:
                raise self.fail(
                    loc + ["recurring"],
                    f"milestone {m.name!r}: 'within' and 'recurring' exclude each other "
                    "(a window from the first event, or a trailing window at every instant)",
                )
            within = self.duration(loc + ["within"], m.within) if m.within is not None else None
            recurring = self.duration(loc + ["recurring"], m.recurring) if m.recurring is not None else None
            criteria = tuple(self.criterion(loc + ["criteria", j], m, c) for j, c in enumerate(m.criteria))
            out.append(
                Milestone(
                    name=m.name,
                    stage=m.stage,
                    level=m.level,
                    criteria=criteria,
                    within=within,
                    recurring=recurring,
                )
            )
        return tuple(out)

    def criterion(self, loc: list[str | int], m: _RawMilestone, c: _RawCriterion) -> Criterion:
        what = f"milestone {m.name!r}, criterion {loc[-1]}"
        if c.kind not in KINDS:
            raise self.fail(loc + ["kind"], f"{what}: unknown kind {c.kind!r} (kinds: {', '.join(KINDS)})")
        if not math.isfinite(c.target) or c.target <= 0:
            raise self.fail(
                loc + ["target"], f"{what}: target must be a finite number greater than zero, got {c.target}"
            )
        if c.kind == "tagged":
            if c.event is not None or c.of is not None or c.over is not None:
                raise self.fail(loc, f"{what}: 'tagged' counts events tagged {m.name!r}; it takes only 'target'")
        elif not c.event:
            raise self.fail(loc, f"{what}: kind {c.kind!r} needs 'event'")
        if c.kind == "distinct":
            if not c.of:
                raise self.fail(loc, f"{what}: kind 'distinct' needs 'of' (a property name or \"user_id\")")
            if c.of == "user_id" and m.level != "account":
                raise self.fail(loc, f"{what}: distinct of user_id only makes sense at level 'account'")
        elif c.of is not None:
            raise self.fail(loc + ["of"], f"{what}: 'of' belongs to kind 'distinct' only")
        if c.kind == "rate":
            if c.over is None:
                raise self.fail(loc, f"{what}: kind 'rate' needs 'over' (the trailing window, e.g. '14d')")
            over = self.duration(loc + ["over"], c.over)
            if over % _UNITS["d"]:
                raise self.fail(loc + ["over"], f"{what}: 'over' must be whole days, got {c.over!r}")
        elif c.over is not None:
            raise self.fail(loc + ["over"], f"{what}: 'over' belongs to kind 'rate' only")
        else:
            over = None
        if c.kind in ("count", "tagged", "distinct") and c.target != int(c.target):
            raise self.fail(loc + ["target"], f"{what}: a {c.kind} target must be a whole number, got {c.target}")
        return Criterion(kind=c.kind, target=c.target, event=c.event, of=c.of, over=over)  # type: ignore[arg-type]

    def check_stage_triggers(
        self, at: list[str | int], stages: tuple[Stage, ...], milestones: tuple[Milestone, ...]
    ) -> None:
        by_name = {m.name: m for m in milestones}
        index = {s.name: i for i, s in enumerate(stages)}
        for i, s in enumerate(stages):
            if s.on is None:
                continue
            loc = at + ["stages", i, "on"]
            m = by_name.get(s.on)
            if m is None:
                raise self.fail(loc, f"stage {s.name!r} starts on unknown milestone {s.on!r}")
            if index[m.stage] >= i:
                raise self.fail(
                    loc,
                    f"stage {s.name!r} starts on milestone {s.on!r}, which belongs to stage "
                    f"{m.stage!r}, not an earlier one: a cycle",
                )
