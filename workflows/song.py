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
    from longsong.workflows import outcome
    from longsong.workflows.gate import (
        KeptWindow,
        analyze_job,
        decided,
        lineage,
        keep,
        reroll_summary,
        unjudged,
        window_job,
    )
    from longsong.workflows.messages import (
        ENGINE,
        NON_RETRYABLE_ERRORS,
        PROGRESS,
        STAGE,
        USER,
        FinishJob,
        FinishOutcome,
        ParentJob,
        ParentWindows,
        Progress,
        SegmentJob,
        SegmentOutcome,
        SongJob,
        SongResult,
        Timing,
        WindowQuality,
        WindowVerdict,
        segment_key,
        track_prefix,
    )

    from longsong.plan import Plan, Segment, make_plan
    from longsong.request import InvalidRequest, Sampling, SongRequest, validate

SEGMENT_TIMEOUT = timedelta(minutes=30)
CPU_TIMEOUT = timedelta(minutes=10)
CLEANUP_TIMEOUT = timedelta(minutes=10)  # over the default storage outage budget (LONGSONG_STORAGE_RETRY_S)
FINISHING_ESTIMATE_S = 5.0  # ETA allowance for the CPU stage before it has run
# Songs started from this patch on: stricter validation, cancel always wins, best-effort cleanup, write-once
# windows, one model per song. Histories recorded before it replay the old way.
CONTROL_PLANE_PATCH = "control-plane-2"
# Songs started from this patch on: each window is judged on the CPU queue (while the next one already
# generates) and re-rolled when it fails; songs can extend or redo a parent's windows. Validation revision 3.
QUALITY_GATE_PATCH = "quality-gate-1"
# From this patch on: callback_url is checked (validation revision 4) and told how the song ended (outcome.py).
SERVICE_PATCH = "service-1"
PROVENANCE_PATCH = "provenance-1"  # from this patch on: validation revision 5 (loudness_lufs -23..-8)
DECODE_LESS_PATCH = "decode-less-1"  # from this patch on: a job names the previous window's audio, to reuse
ANALYZE_TIMEOUT = timedelta(minutes=10)  # over the default storage outage budget, like the finishing activities


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
        self._inflight: list[workflow.ActivityHandle] = []
        self._windows: list[WindowQuality] = []  # the gate's verdict of each kept window, in order
        self._rerolls = 0
        self._gate_note = ""  # the last re-roll, for the Web UI details

    @workflow.run
    async def run(self, job: SongJob) -> SongResult:
        self._started = workflow.now()
        self._job = job
        self._req: SongRequest | None = None  # once validated
        self._v2 = workflow.patched(CONTROL_PLANE_PATCH)
        self._v3 = self._v2 and workflow.patched(QUALITY_GATE_PATCH)
        self._v4 = self._v3 and workflow.patched(SERVICE_PATCH)
        self._v5 = self._v4 and workflow.patched(PROVENANCE_PATCH)
        self._v6 = self._v5 and workflow.patched(DECODE_LESS_PATCH)
        outcome.started(job)
        try:
            result = await self._song(job)
        except (Exception, asyncio.CancelledError) as e:
            await outcome.ended(job, self._req, self._started, None, e, self._v4)
            raise
        await outcome.ended(job, self._req, self._started, result, None, self._v4)
        return result

    async def _song(self, job: SongJob) -> SongResult:
        self._retry = retry_policy(job.timing)
        self._heartbeat = timedelta(seconds=job.timing.heartbeat_timeout_s)
        try:
            req = validate(job.request, revision=5 if self._v5 else 4 if self._v4 else 3 if self._v3 else 2 if self._v2
                           else 1)
        except InvalidRequest as e:
            self._stage = "failed"
            raise ApplicationError(str(e), type="InvalidRequest", non_retryable=True) from None
        self._req = req
        seed = req.seed if req.seed is not None else workflow.random().randrange(2**31)
        watermark_id = workflow.random().getrandbits(32)
        workflow.upsert_search_attributes([USER.value_set(req.user_id), ENGINE.value_set(req.engine)])
        track = track_prefix(req.user_id, req.request_id)
        parent: ParentWindows | None = None
        try:
            if self._v3 and req.parent_id is not None:
                parent = await self._run(
                    "load_parent", ParentJob(req.user_id, req.parent_id, req.keep_windows or 0),
                    result_type=ParentWindows, task_queue=job.cpu_queue, start_to_close_timeout=CPU_TIMEOUT,
                    retry_policy=self._retry, summary=f"load windows 1-{req.keep_windows} of song {req.parent_id}")
            try:
                plan = make_plan(req, seed, parent.segments if parent else ())
            except InvalidRequest as e:
                raise ApplicationError(str(e), type="InvalidRequest", non_retryable=True) from None
            self._total = len(plan.segments)
            if self._v3:
                kept = await self._generate_gated(req, plan, parent)
                segments = [w.outcome for w in kept if w.outcome is not None]
                records = [w.record_key for w in kept]
            else:
                segments = await self._generate(req, plan)
                records = [o.record_key or segment_key(req.request_id, o.index, "json") for o in segments]
            t_gen = workflow.now()
            self._set_stage("finishing")
            finish = FinishJob(req, seed, replace(plan, segments=[]), records, watermark_id, self._started.isoformat(),
                               {"generation_s": (t_gen - self._started).total_seconds()})
            if self._v3:
                finish = replace(finish, quality=[w.quality for w in kept], features=[w.features_key for w in kept],
                                 reports=[w.report_key for w in kept], rejected=[w.rejected for w in kept],
                                 max_rerolls=req.max_rerolls, parent=lineage(req, parent))
            finished: FinishOutcome = await self._run(
                "finish_song",
                finish,
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
        first, m = segments[0], finished.mastered  # a derived song always generates at least one window
        result = SongResult(
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
        if self._v3:
            result.windows = list(self._windows)
            result.quality = ("off" if not req.max_rerolls else
                              "flagged" if any(not w.passed for w in self._windows) else "passed")
            result.parent_id = req.parent_id
        return result

    async def _run(self, activity: str, arg, **options):
        """execute_activity where a cancel always wins: once the song is cancelled the running activity is asked
        to stop and awaited (so cleanup never races it), and the cancellation goes on even when the activity
        finished anyway (sdk-python#620: it would otherwise return its result and the song carry on)."""
        if not self._v2:  # as songs started before the patch ran: only windows waited for their cancellation
            if activity == "generate_segment":
                options["cancellation_type"] = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
            return await workflow.execute_activity(activity, arg, **options)
        return await self._await(self._start(activity, arg, **options))

    def _start(self, activity: str, arg, **options) -> workflow.ActivityHandle:
        options["cancellation_type"] = workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
        handle = workflow.start_activity(activity, arg, **options)
        self._inflight.append(handle)
        return handle

    async def _await(self, handle: workflow.ActivityHandle, discard: bool = False):
        """The handle's result. A song cancelled meanwhile asks every activity still in flight to stop and
        waits for each (cleanup never races a speculative window). `discard`: cancel this one and wait for
        its end, whatever it is (None)."""
        if discard:
            handle.cancel()
        try:
            return await asyncio.shield(handle)
        except asyncio.CancelledError:
            if discard and handle.done():  # its own cancellation, not the song's
                return None
            for h in self._inflight:
                h.cancel()
            for h in list(self._inflight):
                try:
                    await h
                except Exception:  # noqa: BLE001 - its cancellation (or failure) changes nothing now
                    pass
            raise
        except Exception:
            if discard:
                return None
            raise
        finally:
            if handle in self._inflight:
                self._inflight.remove(handle)

    def _start_window(self, job: SegmentJob, why: str = "") -> workflow.ActivityHandle:
        seg = job.segment
        label = f"segment {seg.index + 1}/{job.total_segments}, {seg.start_s:.0f}–{seg.end_s:.0f} s"
        if job.reroll:
            label += f", re-roll {job.reroll} (seed {seg.seed}{': ' + why if why else ''})"
        return self._start("generate_segment", job, result_type=SegmentOutcome, task_queue=self._job.gpu_queue,
                           start_to_close_timeout=SEGMENT_TIMEOUT, heartbeat_timeout=self._heartbeat,
                           retry_policy=self._retry, summary=label[:200])

    def _start_analysis(self, req: SongRequest, seg: Segment, out: SegmentOutcome, history: list[str],
                        reroll: int) -> workflow.ActivityHandle:
        label = f"judge window {seg.index + 1}/{self._total}" + (f", re-roll {reroll}" if reroll else "")
        return self._start("analyze_window", analyze_job(req, seg, out, history, reroll), result_type=WindowVerdict,
                           task_queue=self._job.cpu_queue, start_to_close_timeout=ANALYZE_TIMEOUT,
                           heartbeat_timeout=self._heartbeat, retry_policy=self._retry, summary=label)

    async def _generate_gated(self, req: SongRequest, plan: Plan, parent: ParentWindows | None) -> list[KeptWindow]:
        """Window i is judged on the CPU queue while window i+1 already generates from it; when i fails, i+1 is
        discarded and i re-rolled from the same stored context (seed + re-roll). The song's model and revision
        are fixed by its first generated window."""
        self._set_stage("generating")
        kept: list[KeptWindow] = []
        if parent is not None:
            for i, seg in enumerate(parent.segments):
                q = replace(parent.quality[i], inherited=True) if i < len(parent.quality) else \
                    WindowQuality(i, 0, 0, True, 1.0, [], inherited=True)
                kept.append(KeptWindow(i, parent.records[i], parent.states[i], parent.features[i],
                                       parent.reports[i], q))
                self._windows.append(q)
            self._done = len(kept)
        segs = plan.segments
        model, revision = (parent.model, parent.model_version) if parent else (req.model, None)
        if len(kept) == len(segs):
            return kept
        first = segs[len(kept)]
        running = self._start_window(window_job(req, plan, first, 0, kept[-1] if kept else None, model, revision,
                                                self._v6))
        attempts: list[tuple[SegmentOutcome, WindowVerdict]] = []
        while True:
            out: SegmentOutcome = await self._await(running)
            seg = segs[out.index]
            self._segment_s.append(out.generate_s)
            if revision is None:
                model, revision = out.model, out.model_version
            nxt = segs[seg.index + 1] if seg.index + 1 < len(segs) else None
            if not req.max_rerolls:
                kept.append(unjudged(out))
            else:
                analysis = self._start_analysis(req, seg, out, [w.features_key for w in kept if w.features_key],
                                                len(attempts))
                speculative = self._start_window(window_job(req, plan, nxt, 0, out, model, revision, self._v6)) \
                    if nxt else None
                verdict: WindowVerdict = await self._await(analysis)
                attempts.append((out, verdict))
                if not decided(attempts, req.max_rerolls):
                    if speculative is not None:
                        await self._await(speculative, discard=True)
                    self._rerolls += 1
                    self._gate_note = reroll_summary(seg.index, len(segs), verdict)
                    self._set_stage("generating")
                    running = self._start_window(
                        window_job(req, plan, seg, len(attempts), kept[-1] if kept else None, model, revision,
                                   self._v6), verdict.note or ", ".join(verdict.failed))
                    continue
                window = keep(attempts)
                attempts = []
                kept.append(window)
                if speculative is not None and window.outcome is not out:  # it continued from a rejected attempt
                    await self._await(speculative, discard=True)
                    speculative = self._start_window(
                        window_job(req, plan, nxt, 0, window, model, revision, self._v6))
                running = speculative
            self._windows.append(kept[-1].quality)
            self._done = seg.index + 1
            self._set_stage("generating")
            if nxt is None:
                return kept
            if not req.max_rerolls:
                running = self._start_window(window_job(req, plan, nxt, 0, out, model, revision, self._v6))

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
        gate = ""
        if self._v3 and self._windows:
            flagged = [f"{w.index + 1}/{self._total}" for w in self._windows if not w.passed]
            gate = f"  \nquality gate: {self._rerolls} re-roll{'s' * (self._rerolls != 1)}"
            gate += f", flagged: window {', '.join(flagged)}" if flagged else ", every kept window passed"
            if self._gate_note:
                gate += f"  \nlast re-roll: {self._gate_note}"
        workflow.set_current_details(
            f"**{stage}** · segments {p.segments_done}/{p.segments_total} · {p.percent}%{eta}{gate}")

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
                        started.isoformat(), now.isoformat(), windows=list(self._windows), rerolls=self._rerolls)
