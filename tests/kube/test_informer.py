"""hcs.kube.Informer's event handling, fed directly (the list+watch against a real API server is
covered by tests/allocator/test_allocator_live.py and tests/dra/test_dra_claim_cache.py)."""

from __future__ import annotations

from typing import Any

import pytest

from hcs.kube import Informer, KubeError, KubeRest, WatchExpired


def _pod(name: str, rv: int, team: str = "a") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv), "labels": {"team": team}}}


def test_a_filtered_informer_reports_objects_that_stop_matching_as_deleted() -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    def name(o: dict[str, Any] | None) -> str | None:
        return None if o is None else str(o["metadata"]["name"])

    inf = Informer(KubeRest(None), "/api/v1/pods", "pods",
                   trim=lambda o: o if o["metadata"]["labels"]["team"] == "a" else None,
                   on_change=lambda t, old, new: seen.append((t, name(old), name(new))))
    inf._apply({"type": "ADDED", "object": _pod("p", 5)})
    inf._apply({"type": "ADDED", "object": _pod("q", 6, team="b")})  # not ours: not kept, not reported
    assert set(inf.items) == {("ns", "p")} and seen == [("ADDED", None, "p")]
    inf._apply({"type": "MODIFIED", "object": _pod("p", 7, team="b")})  # stopped matching
    assert inf.items == {} and seen[-1] == ("DELETED", "p", None)
    inf._apply({"type": "DELETED", "object": _pod("q", 8, team="b")})  # never kept: nothing to report
    assert len(seen) == 2 and inf.rv == 8 and inf.events == 4


def test_resource_versions_only_move_forward_and_bookmarks_are_not_events() -> None:
    inf = Informer(KubeRest(None), "/api/v1/pods", "pods")
    inf._apply({"type": "ADDED", "object": _pod("p", 10)})
    inf._apply({"type": "MODIFIED", "object": _pod("p", 9)})  # an older copy never moves rv back
    inf._apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}})
    assert inf.rv == 12 and inf.events == 2 and inf.get("ns", "p") is not None
    with pytest.raises(WatchExpired):
        inf._apply({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
    with pytest.raises(KubeError, match="pods watch error"):
        inf._apply({"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "boom"}})
    for junk in (None, "x", {"type": "ADDED"}, {"type": "ADDED", "object": "x"}):
        inf._apply(junk)  # never raises on bad input
    assert inf.events == 2
