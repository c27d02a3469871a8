"""How the CLI shows a song's progress: the bar of `--wait` and the line about a retried or silent activity."""

from __future__ import annotations


def activity_line(p) -> str:
    """`retrying window 3: attempt 2 of 5, last failure: ..., last heartbeat 12 s ago`; "" when all is well."""
    if not (p.retrying or p.stalled):
        return ""
    what = {"generate_segment": f"window {p.window}", "finish_song": "finishing",
            "cleanup_scratch": "cleanup"}.get(p.activity or "", p.activity or "activity")
    if p.activity == "generate_segment" and p.window is None:
        what = "window"
    parts = [f"attempt {p.attempt} of {p.max_attempts}" if p.max_attempts else f"attempt {p.attempt}"]
    if p.last_failure:
        parts.append(f"last failure: {p.last_failure}")
    if p.heartbeat_age_s is not None:
        parts.append(f"last heartbeat {p.heartbeat_age_s:.0f} s ago")
    if p.retrying:
        return f"retrying {what}: " + ", ".join(parts)
    return f"{what} silent: " + ", ".join(parts) + " (retried once its heartbeat timeout passes)"


async def wait_with_bar(lc, workflow_id: str, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return await lc.wait(workflow_id)
    columns = [TextColumn("{task.description:<11}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("segments {task.fields[seg]}"), TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
               TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("queued", total=100, seg="0/?", eta="?", note="")

        def update(p) -> None:
            eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
            stage = "retrying" if p.retrying else p.stage
            bar.update(task, description=stage, completed=p.percent, seg=f"{p.segments_done}/{p.segments_total}",
                       eta=eta, note=activity_line(p))

        result = await lc.wait(workflow_id, on_progress=update)
        bar.update(task, description="done", completed=100, eta="0s", note="")
    return result
