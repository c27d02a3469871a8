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
    )

SEGMENT_TIMEOUT = timedelta(minutes=30)
CPU_TIMEOUT = timedelta(minutes=10)
FINISHING_ESTIMATE_S = 5.0  # ETA allowance for the CPU stage before it has run


def retry_policy(timing: Timing) -> RetryPolicy:
    """Bounded retries (an oversized result is retryable: unbounded attempts would resend it forever)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=timing.retry_initial_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=timing.retry_max_s),
        maximum_attempts=5,
        non_retryable_error_types=list(NON_RETRYABLE_ERRORS),
    )


@workflow.defn(name="SongWorkflow")
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
        try:
            req = validate(job.request)
        except InvalidRequest as e:
            self._stage = "failed"
            raise ApplicationError(str(e), type="InvalidRequest", non_retryable=True) from None
        seed = req.seed if req.seed is not None else workflow.random().randrange(2**31)
        watermark_id = workflow.random().getrandbits(32)
        plan = make_plan(req, seed)
        self._total = len(plan.segments)
        workflow.upsert_search_attributes([USER.value_set(req.user_id), ENGINE.value_set(req.engine)])
        try:
            segments = await self._generate(req, plan)
            t_gen = workflow.now()
            self._set_stage("finishing")
            records = [segment_key(req.request_id, s.index, "json") for s in segments]
            finished: FinishOutcome = await workflow.execute_activity(
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
        except (Exception, asyncio.CancelledError) as e:
            self._set_stage("cancelled" if is_cancelled_exception(e) else "failed")
            await self._cleanup(req.request_id)
            raise
        await self._cleanup(req.request_id)
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
            urls=finished.urls,
        )

    async def _generate(self, req: SongRequest, plan: Plan) -> list[SegmentOutcome]:
        """Continuation is sequential: window i is conditioned on window i-1's stored hand-off."""
        self._set_stage("generating")
        outcomes: list[SegmentOutcome] = []
        handoff: str | None = None
        for seg in plan.segments:
            job = SegmentJob(
                request_id=req.request_id,
                engine=req.engine,
                model=req.model,
                segment=seg,
                total_segments=len(plan.segments),
                sampling=Sampling.of(req),
                handoff_key=handoff,
                audio_key=segment_key(req.request_id, seg.index, "npy"),
                state_key=segment_key(req.request_id, seg.index, "state"),
                record_key=segment_key(req.request_id, seg.index, "json"),
            )
            started = workflow.now()
            out: SegmentOutcome = await workflow.execute_activity(
                "generate_segment",
                job,
                result_type=SegmentOutcome,
                task_queue=self._job.gpu_queue,
                start_to_close_timeout=SEGMENT_TIMEOUT,
                heartbeat_timeout=self._heartbeat,
                retry_policy=self._retry,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"segment {seg.index + 1}/{len(plan.segments)}, "
                        f"{seg.start_s:.0f}–{seg.end_s:.0f} s",
            )
            self._segment_s.append((workflow.now() - started).total_seconds())
            outcomes.append(out)
            handoff = out.state_key
            self._done = seg.index + 1
            self._set_stage("generating")
        return outcomes

    async def _cleanup(self, request_id: str) -> None:
        """Remove the song's scratch objects, also after cancellation (a fresh, uncancelled activity)."""
        await workflow.execute_activity(
            "cleanup_scratch",
            request_id,
            task_queue=self._job.cpu_queue,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=self._retry,
            summary="remove scratch objects",
        )

    def _set_stage(self, stage: str) -> None:
        self._stage = stage
        p = self.progress()
        workflow.upsert_search_attributes([STAGE.value_set(stage), PROGRESS.value_set(p.percent)])
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s is not None and stage not in ("done", "failed", "cancelled") else ""
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
