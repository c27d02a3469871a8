"""SongWorkflow: validate -> plan -> segments on the GPU queue -> finish (master, encode, store) on the CPU queue.

The workflow only decides: it passes object-store keys (claim check), never audio, and
imports nothing heavy (the sandbox loads only `longsong.request/plan/payloads`).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from longsong.plan import Plan, make_plan
    from longsong.request import InvalidRequest, Sampling, SongRequest, validate
    from longsong.workflows.messages import (
        ENGINE,
        NON_RETRYABLE_ERRORS,
        PROGRESS,
        STAGE,
        USER,
        FinishJob,
        FinishOutcome,
        Progress,
        SegmentJob,
        SegmentOutcome,
        SongJob,
        SongResult,
        Timing,
        segment_key,
        track_prefix,
    )

SEGMENT_TIMEOUT = timedelta(minutes=30)
CPU_TIMEOUT = timedelta(minutes=10)
CLEANUP_TIMEOUT = timedelta(minutes=10)  # over the default storage outage budget (LONGSONG_STORAGE_RETRY_S)
FINISHING_ESTIMATE_S = 5.0  # ETA allowance for the CPU stage before it has run
# Songs started from this patch on: stricter validation, cancel always wins, best-effort cleanup, write-once
# windows, one model per song. Histories recorded before it replay the old way.
CONTROL_PLANE_PATCH = "control-plane-2"


def retry_policy(timing: Timing) -> RetryPolicy:
    """Bounded retries (an oversized result is retryable: unbounded attempts would resend it forever)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=timing.retry_initial_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=timing.retry_max_s),
        maximum_attempts=5,
        non_retryable_error_types=list(NON_RETRYABLE_ERRORS),
    )


@workflow.defn(name="SongWorkflow")  # pinned by the versioned workers' default (longsong/worker.py)
class SongWorkflow:
    def __init__(self) -> None:
        self._stage = "queued"
        self._done = 0
        self._total = 0
        self._started: datetime | None = None
        self._segment_s: list[float] = []

    @workflow.run
    async def run(self, job: SongJob) -> SongResult:
        self._started = workflow.now()
        self._job = job
        self._retry = retry_policy(job.timing)
        self._heartbeat = timedelta(seconds=job.timing.heartbeat_timeout_s)
        self._v2 = workflow.patched(CONTROL_PLANE_PATCH)
        try:
            req = validate(job.request, revision=2 if self._v2 else 1)
        except InvalidRequest as e:
            self._stage = "failed"
            raise ApplicationError(str(e), type="InvalidRequest", non_retryable=True) from None
        seed = req.seed if req.seed is not None else workflow.random().randrange(2**31)
        watermark_id = workflow.random().getrandbits(32)
        plan = make_plan(req, seed)
        self._total = len(plan.segments)
        workflow.upsert_search_attributes([USER.value_set(req.user_id), ENGINE.value_set(req.engine)])
        track = track_prefix(req.user_id, req.request_id)
        try:
            segments = await self._generate(req, plan)
            t_gen = workflow.now()
            self._set_stage("finishing")
            records = [o.record_key or segment_key(req.request_id, o.index, "json") for o in segments]
            finished: FinishOutcome = await self._run(
                "finish_song",
                FinishJob(req, seed, replace(plan, segments=[]), records, watermark_id, self._started.isoformat(),
                          {"generation_s": (t_gen - self._started).total_seconds()}),
                result_type=FinishOutcome,
                task_queue=job.cpu_queue,
                start_to_close_timeout=CPU_TIMEOUT,
                heartbeat_timeout=self._heartbeat,
                retry_policy=self._retry,
                summary="assemble, master, watermark, encode " + ", ".join(req.formats) + ", store",
            )
            if self._v2:  # inside the try: a cancel that arrives while scratch is removed still unpublishes
                await self._cleanup("cleanup_scratch", req.request_id, "remove scratch objects")
        except (Exception, asyncio.CancelledError) as e:
            cancelled, finishing = is_cancelled_exception(e), self._stage == "finishing"
            self._set_stage("cancelled" if cancelled else "failed")
            if finishing and self._v2:  # a cancel, or a failure part-way through publishing: nothing stays visible
                await self._cleanup("unpublish_track", track, "remove the partly or wholly published track")
            await self._cleanup("cleanup_scratch", req.request_id, "remove scratch objects")
            raise
        if not self._v2:
            await self._cleanup("cleanup_scratch", req.request_id, "remove scratch objects")
        done = workflow.now()
        total = (done - self._started).total_seconds()
        generation = sum(s.generate_s for s in segments)
        finishing = finished.timings["wall_s"]
        timings = {"total_s": total, "generation_s": generation, "finishing_s": finishing,
                   "orchestration_s": max(0.0, total - generation - finishing)}
        self._set_stage("done")
        first, m = segments[0], finished.mastered
        return SongResult(
            request_id=req.request_id,
            user_id=req.user_id,
            status="completed",
            duration_s=m.n_samples / m.sample_rate,
            seed=seed,
            engine=first.engine,
            model=first.model,
            loudness_lufs=m.loudness_lufs,
            true_peak_dbtp=m.true_peak_dbtp,
            watermark_id=watermark_id,
            files={name: f.key for name, f in finished.files.items()},
            timings=timings,
        )

    async def _run(self, activity: str, arg, **options):
        """execute_activity where a cancel always wins: once the song is cancelled the running activity is asked
        to stop and awaited (so cleanup never races it), and the cancellation goes on even when the activity
        finished anyway (sdk-python#620: it would otherwise return its result and the song carry on)."""
        if not self._v2:  # as songs started before the patch ran: only windows waited for their cancellation
            if activity == "generate_segment":
                options["cancellation_type"] = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
            return await workflow.execute_activity(activity, arg, **options)
        options["cancellation_type"] = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
        handle = workflow.start_activity(activity, arg, **options)
        try:
            return await asyncio.shield(handle)
        except asyncio.CancelledError:
            handle.cancel()
            try:
                await handle
            except Exception:  # noqa: BLE001 - its cancellation (or failure) changes nothing now
                pass
            raise

    async def _generate(self, req: SongRequest, plan: Plan) -> list[SegmentOutcome]:
        """Continuation is sequential: window i is conditioned on window i-1's stored hand-off. From the first
        window on, the song's model and revision are fixed: every later window must use the same."""
        self._set_stage("generating")
        outcomes: list[SegmentOutcome] = []
        handoff: str | None = None
        model, revision = req.model, None
        for seg in plan.segments:
            job = SegmentJob(
                request_id=req.request_id,
                engine=req.engine,
                model=model,
                segment=seg,
                total_segments=len(plan.segments),
                sampling=Sampling.of(req),
                handoff_key=handoff,
                audio_key=segment_key(req.request_id, seg.index, "npy"),
                state_key=segment_key(req.request_id, seg.index, "state"),
                record_key=segment_key(req.request_id, seg.index, "json"),
            )
            if self._v2:
                job = replace(job, write_once=True, model_version=revision)
            started = workflow.now()
            out: SegmentOutcome = await self._run(
                "generate_segment",
                job,
                result_type=SegmentOutcome,
                task_queue=self._job.gpu_queue,
                start_to_close_timeout=SEGMENT_TIMEOUT,
                heartbeat_timeout=self._heartbeat,
                retry_policy=self._retry,
                summary=f"segment {seg.index + 1}/{len(plan.segments)}, "
                        f"{seg.start_s:.0f}–{seg.end_s:.0f} s",
            )
            self._segment_s.append((workflow.now() - started).total_seconds())
            outcomes.append(out)
            handoff = out.state_key
            if self._v2 and revision is None:
                model, revision = out.model, out.model_version
            self._done = seg.index + 1
            self._set_stage("generating")
        return outcomes

    async def _cleanup(self, activity: str, arg: str, summary: str) -> None:
        """Remove the song's scratch (or its track after a cancel), also after cancellation (a fresh,
        uncancelled activity). Best effort: a failed cleanup never fails a published song nor hides the
        error that ended the song (leftover scratch expires by the store's lifecycle rule)."""
        try:
            await workflow.execute_activity(activity, arg, task_queue=self._job.cpu_queue,
                                            start_to_close_timeout=CLEANUP_TIMEOUT, retry_policy=self._retry,
                                            summary=summary)
        except Exception as e:  # noqa: BLE001
            if not self._v2:
                raise
            workflow.logger.warning("%s failed (left for the lifecycle rule): %s", activity, e.cause or e)

    def _set_stage(self, stage: str) -> None:
        self._stage = stage
        p = self.progress()
        workflow.upsert_search_attributes([STAGE.value_set(stage), PROGRESS.value_set(p.percent)])
        eta = ""
        if p.eta_s is not None and stage not in ("done", "failed", "cancelled"):
            # the details are a snapshot: say when it was taken (a retried window shows under pending activities)
            eta = f", ETA {p.eta_s:.0f} s as of {workflow.now():%H:%M:%S} UTC" if self._v2 else f", ETA {p.eta_s:.0f} s"
        workflow.set_current_details(
            f"**{stage}** · segments {p.segments_done}/{p.segments_total} · {p.percent}%{eta}")

    @workflow.query
    def progress(self) -> Progress:
        now = workflow.now()
        started = self._started or now
        elapsed = (now - started).total_seconds()
        remaining = self._total - self._done
        if self._stage in ("done", "failed", "cancelled"):
            eta = 0.0
        elif self._segment_s:
            eta = remaining * sum(self._segment_s) / len(self._segment_s) + FINISHING_ESTIMATE_S
        else:
            eta = None
        weight = {"finishing": 0.95, "done": 1.0}
        if self._stage in weight:
            percent = int(100 * weight[self._stage])
        else:
            percent = int(90 * self._done / self._total) if self._total else 0
        return Progress(self._stage, self._done, self._total, elapsed, eta, percent,
                        started.isoformat(), now.isoformat())
