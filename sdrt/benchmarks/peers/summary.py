"""``summary.vs_best_peer``: sdrt's fastest configuration against the fastest peer of the same precision class,
per size and overall (the worst size: the target must hold at every one)."""

from __future__ import annotations

TARGET = 1.2  # the fastest peer's time / sdrt's, per U-Net step and end to end


def _median(entry: dict, timing: str) -> float:
    return entry["timings"][timing]["median"]


def config_vs_best_peer(config: dict, peer_names: set[str], precision_class) -> dict | None:
    """One config's comparison: sdrt's fastest row among the precision classes a peer ran in, against the fastest
    peer of its class; None where no sdrt row has a peer row of its class."""
    rows = {n: b for n, b in config["backends"].items() if n != "torch"}
    peers = {n: b for n, b in rows.items() if n in peer_names}
    classes = {precision_class(n) for n in peers}  # an sdrt row of a class no peer ran in has nothing to meet
    sdrt = {n: b for n, b in rows.items() if n not in peer_names and precision_class(n) in classes}
    if not sdrt:
        return None
    best = min(sdrt, key=lambda n: _median(sdrt[n], "total"))
    same = {n: b for n, b in peers.items() if precision_class(n) == precision_class(best)}
    peer = min(same, key=lambda n: _median(same[n], "total"))
    return {"height": config["height"], "width": config["width"], "batch": config["batch"],
            "sdrt": best, "peer": peer, "precision_class": precision_class(best),
            "unet_step": _median(same[peer], "unet_step") / _median(sdrt[best], "unet_step"),
            "end_to_end": _median(same[peer], "total") / _median(sdrt[best], "total")}


def vs_best_peer(models: list[dict], peer_names: set[str], not_run: set[str], precision_class) -> dict | None:
    by_config = [c for m in models for config in m["configs"]
                 if (c := config_vs_best_peer(config, peer_names, precision_class)) is not None]
    if not by_config:
        return None
    worst = min(by_config, key=lambda c: min(c["unet_step"], c["end_to_end"]))
    return {"sdrt": worst["sdrt"], "peer": worst["peer"],
            "peers_run": sorted(peer_names - not_run), "peers_not_run": sorted(peer_names & not_run),
            "unet_step": min(c["unet_step"] for c in by_config),
            "end_to_end": min(c["end_to_end"] for c in by_config),
            "target": TARGET,
            "met": all(c["unet_step"] >= TARGET and c["end_to_end"] >= TARGET for c in by_config),
            "by_config": by_config}
