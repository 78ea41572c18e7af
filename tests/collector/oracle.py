"""A straightforward, independent recomputation from the raw event list, for the property tests.

It shares nothing with the collector's incremental core but the configuration objects: every
number is recomputed from scratch, the slow and obvious way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headway_collector.config import Milestone, Project

DAY = 86_400_000_000


@dataclass
class E:
    id: str
    event: str
    user: str
    account: str | None
    t: int
    weight: float | None = None
    value: float | None = None
    tags: tuple[str, ...] = ()
    props: dict[str, Any] | None = None


def score(project: Project, events: list[E], now: int, half_life: int | None = None) -> float:
    h = half_life or project.engagement.half_life
    return sum(project.weight(e.event, e.weight) * 2 ** (-(now - e.t) / h) for e in events)


def milestone(m: Milestone, events: list[E]) -> dict[str, Any]:
    """progress, achieved_at, deadline and per-criterion (done, target) for one subject."""
    events = sorted(events, key=lambda e: (e.t, e.id))
    first = events[0].t
    close = first + m.within if m.within is not None else None
    inside = [e for e in events if close is None or e.t <= close]
    dones, times = [], []
    for c in m.criteria:
        if c.kind == "tagged":
            hits = [e for e in inside if m.name in e.tags]
        else:
            hits = [e for e in inside if e.event == c.event]
        done, at = 0.0, None
        if c.kind in ("count", "tagged"):
            done = float(len(hits))
            at = hits[int(c.target) - 1].t if len(hits) >= c.target else None
        elif c.kind == "distinct":
            firsts: dict[str, int] = {}
            for e in hits:
                key = e.user if c.of == "user_id" else (e.props or {}).get(c.of or "")
                if key is not None:
                    firsts.setdefault(str(key), e.t)
            done = float(len(firsts))
            at = sorted(firsts.values())[int(c.target) - 1] if len(firsts) >= c.target else None
        elif c.kind == "sum":
            total = 0.0
            for t in sorted({e.t for e in hits}):
                total += sum(e.value or 0.0 for e in hits if e.t == t)
                if total >= c.target and at is None:
                    at = t
            done = c.target if at is not None else max(0.0, total)
        else:  # rate: at each event, the events of the trailing window per day of it
            over = (c.over or DAY) // DAY
            best, met = 0.0, None
            for i, e in enumerate(hits):
                day = e.t // DAY
                width = max(1, min(over, day - first // DAY + 1))
                n = sum(1 for x in hits[: i + 1] if day - width < x.t // DAY <= day)
                best = max(best, n / width)
                if met is None and n >= c.target * width:
                    met = e.t
            done = c.target if met is not None else best
            if met is not None:
                # Judged over a complete window only: once its day is over and the subject is a
                # day old, as an event of the subject at or after that instant shows.
                judged = max((met // DAY + 1) * DAY, first + DAY)
                at = judged if judged <= events[-1].t else None
        dones.append((min(done, c.target), c.target))
        times.append(at)
    return {
        "progress": sum(max(0.0, min(1.0, d / t)) for d, t in dones) / len(dones),
        "achieved_at": max(times) if all(x is not None for x in times) else None,  # type: ignore[type-var]
        "deadline": close,
        "criteria": dones,
    }


def status(result: dict[str, Any], now: int) -> str:
    if result["achieved_at"] is not None:
        return "achieved"
    if result["deadline"] is not None and now > result["deadline"]:
        return "missed"
    return "in_progress" if result["progress"] > 0 else "pending"


# --- the lifecycle (SPEC section 4): recurring milestones, stage, quadrant, as of an instant -------


def _key(c: Any, e: E) -> str | None:
    key = e.user if c.of == "user_id" else (e.props or {}).get(c.of or "")
    return None if key is None else str(key)


def _hits(m: Milestone, c: Any, events: list[E]) -> list[E]:
    return [e for e in events if (m.name in e.tags if c.kind == "tagged" else e.event == c.event)]


def _trailing(m: Milestone, c: Any, events: list[E], t: int) -> tuple[float, bool]:
    """(done, met) of one criterion of a recurring milestone over its window (t - w, t]."""
    w = c.over if c.kind == "rate" else m.recurring
    inside = [e for e in _hits(m, c, events) if t - w < e.t <= t]
    if c.kind == "sum":
        total = 0.0
        for e in sorted(inside, key=lambda e: (e.t, e.value or 0.0)):
            total += e.value or 0.0
        return total, total >= c.target
    if c.kind == "distinct":
        n = len({k for e in inside if (k := _key(c, e)) is not None})
        return float(n), n >= c.target
    if c.kind == "rate":
        days = w // DAY
        return len(inside) / days, len(inside) >= c.target * days
    return float(len(inside)), len(inside) >= c.target


def recurring(m: Milestone, events: list[E], at: int) -> dict[str, Any]:
    """A recurring milestone at `at` from the events at or before it: whether it holds at every
    instant where that can change (an event entering or leaving a window), the slow way."""
    events = [e for e in events if e.t <= at]
    edges = sorted({p for c in m.criteria for e in _hits(m, c, events)
                    for p in (e.t, e.t + (c.over if c.kind == "rate" else m.recurring)) if p <= at})
    start = ended = None
    was = False
    for p in edges:
        now = all(_trailing(m, c, events, p)[1] for c in m.criteria)
        if now and not was:
            start, ended = p, None
        elif was and not now:
            ended = p
        was = now
    dones = [_trailing(m, c, events, at)[0] for c in m.criteria]
    return {
        "progress": sum(max(0.0, min(1.0, d / c.target)) for d, c in zip(dones, m.criteria)) / len(dones),
        "achieved_at": start,
        "holding": was,
        "ended": ended,
        "deadline": None,
        "criteria": [(min(d, c.target), c.target) for d, c in zip(dones, m.criteria)],
    }


def standing(m: Milestone, events: list[E], at: int) -> dict[str, Any]:
    """A milestone of a subject as of `at`: from its events at or before `at` alone, with `status`."""
    mine = [e for e in events if e.t <= at]
    if m.recurring is not None:
        r = recurring(m, mine, at)
        r["status"] = ("achieved" if r["holding"] else "lapsed" if r["achieved_at"] is not None
                       else "in_progress" if r["progress"] > 0 else "pending")
        return r
    r = milestone(m, mine)
    r["status"] = status(r, at)
    return r


def labels(project: Project, level: str, events: list[E], at: int) -> dict[str, Any]:
    """Stage and quadrant as of `at` (SPEC section 4), from the subject's events at or before it."""
    mine = [e for e in events if e.t <= at]
    first = min(e.t for e in mine)
    ms = project.milestones_at(level)
    got = {m.name: standing(m, mine, at) for m in ms}
    stages = project.stages
    idx = None
    if stages:
        idx = 0
        for i, s in enumerate(stages):
            if (s.after is not None and at - first >= s.after) or (s.on is not None and s.on in got
                                                                    and got[s.on]["achieved_at"] is not None):
                idx = i
    judged = ms
    if idx is not None:
        having = [i for i, s in enumerate(stages) if i <= idx and any(m.stage == s.name for m in ms)]
        judged = tuple(m for m in ms if having and m.stage == stages[having[-1]].name)

    def shows(m: Milestone) -> bool:
        r = got[m.name]
        if r["status"] == "achieved":
            return True
        if r["status"] != "pending" and r["status"] != "in_progress":
            return False
        if r["deadline"] is None:
            return r["progress"] > 0
        return at <= r["deadline"] and r["progress"] > 0 and \
            r["progress"] >= (at - first) / (r["deadline"] - first)

    succeeding = bool(judged) and not any(got[m.name]["status"] in ("missed", "lapsed") for m in judged) \
        and any(shows(m) for m in judged)
    engaged = score(project, mine, at) >= project.engagement.engaged_threshold
    if at - first < project.engagement.new_for:
        quadrant = "new"
    elif engaged:
        quadrant = "thriving" if succeeding else "stuck"
    else:
        quadrant = "quiet" if succeeding else "at_risk"
    return {"stage": stages[idx].name if idx is not None else None, "quadrant": quadrant, "milestones": got}
# --- accounts: memberships and revenue (SPEC sections 3 and 4), the obvious way -----------------


def accounts_of(events: list[E], user: str, at: int) -> list[tuple[str, int, int]]:
    """(account, first seen, last seen) of the accounts the user's events at or before `at`
    carried, as of `at`: a later event changes neither; the most recently seen first, ties by
    account id."""
    mine = [e for e in events if e.user == user and e.account is not None and e.t <= at]
    out = []
    for account in {e.account for e in mine}:
        times = [e.t for e in mine if e.account == account]
        out.append((str(account), min(times), max(times)))
    return sorted(out, key=lambda m: (-m[2], m[0]))


def members(events: list[E], account: str, at: int) -> set[str]:
    """The users whose events carried `account` at or before `at`."""
    return {e.user for e in events if e.account == account and e.t <= at}


def members_by_quadrant(project: Project, events: list[E], account: str, at: int) -> dict[str, int]:
    """How many of the account's members as of `at` are in each quadrant as of `at` (each member's
    own events at or before `at`, whichever account they carried)."""
    out: dict[str, int] = {}
    for user in members(events, account, at):
        q = labels(project, "user", [e for e in events if e.user == user], at)["quadrant"]
        out[q] = out.get(q, 0) + 1
    return out


def mrr_by_quadrant(project: Project, events: list[E], at: int) -> dict[str, float]:
    """The MRR at `at` of the paying accounts, summed by each account's quadrant as of `at`."""
    out: dict[str, float] = {}
    for account in sorted({e.account for e in events if e.account is not None}):
        value = mrr(project, events, account, at)[0]
        if value > 0:
            q = labels(project, "account", [e for e in events if e.account == account], at)["quadrant"]
            out[q] = out.get(q, 0.0) + value
    return out


def mrr(project: Project, events: list[E], account: str, t: int) -> tuple[float, int | None]:
    """The account's MRR at t and the time of the event that set it: its latest revenue event at
    or before t, the greater id of one instant (negative or missing values change nothing)."""
    changes = [e for e in events if e.account == account and e.event == project.revenue_event
               and e.value is not None and e.value >= 0 and e.t <= t]
    if not changes:
        return 0.0, None
    last = max(changes, key=lambda e: (e.t, e.id))
    return float(last.value or 0.0), last.t


def revenue_periods(project: Project, events: list[E], bounds: list[int], at: int) -> list[dict[str, Any]]:
    """SPEC section 4, "Revenue", for the periods [bounds[k], bounds[k+1]), counting the events at
    or before `at` only."""
    seen = [e for e in events if e.t <= at]
    accounts = sorted({e.account for e in seen if e.account is not None and e.event == project.revenue_event})
    out = []
    for s, e in zip(bounds, bounds[1:]):
        p: dict[str, Any] = dict.fromkeys(("mrr_start", "new", "reactivated", "expansion", "contraction", "churned",
                                            "mrr_end"), 0.0)
        p.update(accounts_start=0, accounts_churned=0, partial=s <= at < e)
        for a in accounts:
            ms, me = mrr(project, seen, a, s)[0], mrr(project, seen, a, e)[0]
            p["mrr_start"] += ms
            p["mrr_end"] += me
            p["accounts_start"] += ms > 0
            if ms > 0 and me == 0:
                p["churned"] += ms
                p["accounts_churned"] += 1
            elif 0 < ms < me:
                p["expansion"] += me - ms
            elif 0 < me < ms:
                p["contraction"] += ms - me
            elif ms == 0 and me > 0:
                # Paid at some instant before s: the MRR at one of its revenue events' instants.
                before = [x.t for x in seen if x.account == a and x.event == project.revenue_event and x.t < s]
                paid = any(mrr(project, seen, a, t)[0] > 0 for t in before)
                p["reactivated" if paid else "new"] += me

        def ratio(num: float, den: float) -> float | None:
            return num / den if den else None

        p["logo_churn_rate"] = ratio(p["accounts_churned"], p["accounts_start"])
        p["net_retention"] = ratio(p["mrr_start"] + p["expansion"] - p["contraction"] - p["churned"], p["mrr_start"])
        p["gross_retention"] = ratio(p["mrr_start"] - p["contraction"] - p["churned"], p["mrr_start"])
        p["quick_ratio"] = ratio(p["new"] + p["reactivated"] + p["expansion"], p["contraction"] + p["churned"])
        out.append(p)
    return out
