"""Every `LONGSONG_*` setting, read once from the environment into one frozen object.

Entry points (workers, CLI, client) call `Settings.from_env()` once and pass the object down;
nothing else reads `LONGSONG_*` variables. A value that does not parse is a `SettingsError`
with one line naming the variable and what it accepts. The README's configuration table is
`markdown_table()` (a test holds the two equal); `python -m longsong.settings` prints it.
Temporal's own connection settings (TEMPORAL_*) are read by `temporalio.envconfig`, and the
S3 backend reads the standard AWS_* variables, as every S3 tool does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

from longsong.analysis.report import Thresholds
from longsong.engines import ENGINE_NAMES

DEV_WATERMARK_KEY = "longsong-dev-watermark-key"
GATE_PREFIX = "LONGSONG_GATE_"
MAX_LINK_EXPIRY = timedelta(days=7)  # SigV4 presigned URLs cannot live longer
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_OFF = ("0", "off", "none", "false", "no", "disabled")


class SettingsError(ValueError):
    """A setting's value does not parse; the message is one line naming the variable."""


# ---------------------------------------------------------------------------------------------- parsers
# Each takes (variable name, raw text) and returns the value or raises SettingsError.


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _path(name: str, raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise SettingsError(f"{name}={raw!r} is not one of 1, 0 (also true/false, yes/no, on/off)")
    return value in _TRUE


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower() or allowed[0]
        if value not in allowed:
            raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value
    return parse


def _number(lo: float, hi: float, *, integer: bool = False) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        kind = "an integer" if integer else "a number"
        try:
            value = int(raw.strip()) if integer else float(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {kind} between {lo:g} and {hi:g}") from None
        if not lo <= value <= hi:
            raise SettingsError(f"{name}={raw!r} is not {kind} between {lo:g} and {hi:g}")
        return value
    return parse


def _names(name: str, raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))


def _engines(name: str, raw: str) -> tuple[str, ...]:
    names = _names(name, raw)
    for engine in names:
        if engine not in ENGINE_NAMES:
            raise SettingsError(f"{name}: unknown engine {engine!r} (allowed: {', '.join(ENGINE_NAMES)})")
    return names


def parse_duration(name: str, raw: str) -> timedelta:
    """'3600', '3600s', '90m', '24h', '7d', '1w', '1h30m' -> timedelta, between 1 s and 7 days."""
    text = raw.strip().lower()
    parts = re.findall(r"(\d+)\s*([smhdw]?)", text)
    if not text or not parts or re.sub(r"(\d+)\s*([smhdw]?)", "", text).strip():
        raise SettingsError(f"{name}: cannot read {raw!r} as a duration (examples: 3600s, 90m, 24h, 7d)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    seconds = sum(int(n) * unit[u] for n, u in parts)
    if not 1 <= seconds <= MAX_LINK_EXPIRY.total_seconds():
        raise SettingsError(f"{name}: {raw!r} is not between 1 second and 7 days (a presigned S3 link's SigV4 "
                            f"limit)")
    return timedelta(seconds=seconds)


def parse_days(name: str, raw: str) -> int | None:
    """'30' or '30d' -> 30; '0'/'off'/'none'/'false' -> None (rule off)."""
    text = raw.strip().lower()
    if text in _OFF:
        return None
    m = re.fullmatch(r"(\d+)\s*d?", text)
    if not m:
        raise SettingsError(f"{name}: expected a number of days (e.g. 2, 30) or 'off', got {raw!r}")
    return int(m.group(1)) or None


def _var(env: str, default: str, parse: Callable[[str, str], Any], doc: str, *, shown: str | None = None) -> Any:
    """A dataclass field read from `env`; `default` is the raw text parsed when the variable is unset or empty."""
    return field(default=parse(env, default),
                 metadata={"env": env, "raw_default": default, "parse": parse, "doc": doc,
                           "shown": shown if shown is not None else (f"`{default}`" if default else "unset")})


# ---------------------------------------------------------------------------------------------- the object


@dataclass(frozen=True)
class Settings:
    home: Path = _var("LONGSONG_HOME", "~/.longsong", _path,
                      "data dir: dev-server database, logs, local objects, temporary files")
    storage: str = _var("LONGSONG_STORAGE", "", _text,
                        "where tracks go: `file:///path`, `/path` or `s3://bucket/prefix`",
                        shown="`$LONGSONG_HOME/objects`")
    gpu_queue: str = _var("LONGSONG_GPU_QUEUE", "longsong-gpu", _text, "GPU task queue (segment generation)")
    cpu_queue: str = _var("LONGSONG_CPU_QUEUE", "longsong-cpu", _text,
                          "CPU task queue: the workflow and the finishing activities")
    watermark_key: str = _var("LONGSONG_WATERMARK_KEY", DEV_WATERMARK_KEY, _text,
                              "watermark secret (never in workflow history)", shown="a development key")
    keep_scratch: bool = _var("LONGSONG_KEEP_SCRATCH", "0", _flag,
                              "`1` keeps `work/{request_id}/` for debugging", shown="off")
    engines: tuple[str, ...] = _var("LONGSONG_ENGINES", "procedural", _engines,
                                    "engines the GPU worker serves: `procedural`, `musicgen`")
    models: tuple[str, ...] = _var("LONGSONG_MODELS", "facebook/musicgen-small", _names,
                                   "MusicGen models to load (hub ids or local dirs, comma-separated)")
    device: str = _var("LONGSONG_DEVICE", "auto", _choice("auto", "cpu", "cuda"),
                       "MusicGen device: `auto` (CUDA when torch sees one), `cpu`, `cuda`")
    dtype: str = _var("LONGSONG_DTYPE", "auto", _choice("auto", "float32", "float16", "bfloat16"),
                      "MusicGen decoder dtype (`auto`: float16 on CUDA, float32 on CPU)")
    quantize: str = _var("LONGSONG_QUANTIZE", "none", _choice("none", "int8"),
                         "`int8`: dynamic int8 quantization of the decoder's linear layers (CPU only)")
    channels: str = _var("LONGSONG_CHANNELS", "auto", _choice("auto", "1", "2"),
                         "output channels the GPU worker must produce (`auto`: what the model makes)")
    cuda_graph: str = _var("LONGSONG_CUDA_GRAPH", "auto", _choice("auto", "0", "1"),
                           "capture the decode step in a CUDA graph (`auto`: on with CUDA)")
    gpu_concurrency: int = _var("LONGSONG_GPU_CONCURRENCY", "1", _number(1, 64, integer=True),
                                "concurrent segment activities per GPU worker")
    gpu_batch: int = _var("LONGSONG_GPU_BATCH", "4", _number(1, 64, integer=True),
                          "MusicGen windows of different songs decoded together in one loop (continuous "
                          "batching; the GPU worker then takes this many segment activities at once; 1: one "
                          "window at a time)")
    gpu_memory_mb: float = _var("LONGSONG_GPU_MEMORY_MB", "0", _number(0, 2**24),
                                "memory budget for the MusicGen windows' buffers (KV cache, text keys/values, "
                                "sampling noise, activations) of a GPU worker; a window waits until it fits "
                                "(`0`: 90 % of the CUDA memory free after the models load, or half the RAM "
                                "available at start on CPU)")
    cpu_concurrency: int = _var("LONGSONG_CPU_CONCURRENCY", "2", _number(1, 64, integer=True),
                                "concurrent finishing activities per CPU worker")
    shutdown_grace_s: float = _var("LONGSONG_SHUTDOWN_GRACE_S", "60", _number(0, 3600),
                                   "SIGTERM grace for a running activity before it is handed back")
    heartbeat_timeout_s: float = _var("LONGSONG_HEARTBEAT_TIMEOUT_S", "60", _number(5, 3600),
                                      "an activity silent this long is retried elsewhere (a crashed worker's "
                                      "window waits this long); set by the client that starts the song")
    retry_initial_s: float = _var("LONGSONG_RETRY_INITIAL_S", "1", _number(0.1, 600),
                                  "first retry interval of a failed activity (doubles each attempt)")
    retry_max_s: float = _var("LONGSONG_RETRY_MAX_S", "30", _number(0.1, 3600), "longest retry interval")
    storage_retry_s: float = _var("LONGSONG_STORAGE_RETRY_S", "300", _number(0, 86400),
                                  "a storage outage this long is waited out (transient errors retried with backoff, "
                                  "heartbeating), then the song fails naming the cause")
    storage_timeout_s: float = _var("LONGSONG_STORAGE_TIMEOUT_S", "20", _number(1, 600),
                                    "connect/read timeout of one storage request; under LONGSONG_HEARTBEAT_TIMEOUT_S")
    deployment: str = _var("LONGSONG_DEPLOYMENT", "longsong", _text, "Temporal Worker Deployment name of the workers")
    build_id: str = _var("LONGSONG_BUILD_ID", "", _text,
                         "this worker's build id in the deployment (unset: unversioned workers, as on the dev stack)")
    dev_port: int = _var("LONGSONG_DEV_PORT", "7233", _number(1, 65535, integer=True), "dev server port")
    dev_ui_port: int = _var("LONGSONG_DEV_UI_PORT", "8233", _number(1, 65535, integer=True),
                            "dev server Web UI port")
    ui_url: str = _var("LONGSONG_UI_URL", "", _text, "Web UI base for links",
                       shown="`http://localhost:$LONGSONG_DEV_UI_PORT`")
    link_expiry: timedelta = _var("LONGSONG_LINK_EXPIRY", "24h", parse_duration,
                                  "S3: presigned download link lifetime (`3600s`, `90m`, `24h`, at most `7d`)")
    link_endpoint: str = _var("LONGSONG_LINK_ENDPOINT", "", _text,
                              "S3: endpoint people download from when it differs from the workers' one")
    scratch_expiry_days: int | None = _var("LONGSONG_SCRATCH_EXPIRY_DAYS", "2", parse_days,
                                           "S3: lifecycle rule expiring failed songs' scratch (`off` disables)")
    retention_days: int | None = _var("LONGSONG_RETENTION_DAYS", "off", parse_days,
                                      "S3: lifecycle rule expiring finished tracks after N days", shown="off")
    max_gain_db: float = _var("LONGSONG_MAX_GAIN_DB", "30", _number(0, 60),
                              "mastering: the most gain a track may get to reach its loudness target")
    c2pa_cert: str = _var("LONGSONG_C2PA_CERT", "", _text,
                          "content credentials: PEM chain (signing certificate first, then its CA)",
                          shown="the dev CA's leaf in `$LONGSONG_HOME/c2pa/`")
    c2pa_key: str = _var("LONGSONG_C2PA_KEY", "", _text, "content credentials: the signing certificate's PEM key",
                         shown="the dev CA's leaf key in `$LONGSONG_HOME/c2pa/`")
    api_host: str = _var("LONGSONG_API_HOST", "127.0.0.1", _text, "HTTP API: address `longsong serve` listens on")
    api_port: int = _var("LONGSONG_API_PORT", "8000", _number(1, 65535, integer=True), "HTTP API port")
    database_url: str = _var("LONGSONG_DATABASE_URL", "", _text,
                             "API keys, usage and quotas: an SQLAlchemy URL (`postgresql+psycopg://…`)",
                             shown="`sqlite:///$LONGSONG_HOME/longsong.db`")
    quota_concurrent: int = _var("LONGSONG_QUOTA_CONCURRENT", "5", _number(0, 100000, integer=True),
                                 "default quota: songs running at once per user")
    quota_daily_minutes: float = _var("LONGSONG_QUOTA_DAILY_MINUTES", "120", _number(0, 1e7),
                                      "default quota: minutes of audio per user per UTC day")
    quota_monthly_minutes: float = _var("LONGSONG_QUOTA_MONTHLY_MINUTES", "1200", _number(0, 1e8),
                                        "default quota: minutes of audio per user per UTC month")
    rate_per_s: float = _var("LONGSONG_RATE_PER_S", "10", _number(0.01, 1e6),
                             "default rate limit: API requests per second per user (token bucket refill)")
    rate_burst: int = _var("LONGSONG_RATE_BURST", "40", _number(1, 1e6, integer=True),
                           "default rate limit: token bucket size (requests allowed at once)")
    webhook_secret: str = _var("LONGSONG_WEBHOOK_SECRET", "longsong-dev-webhook-secret", _text,
                               "master secret each key's webhook signing secret is derived from",
                               shown="a development key")
    webhook_allow_private: bool = _var("LONGSONG_WEBHOOK_ALLOW_PRIVATE", "0", _flag,
                                       "`1` allows `http` callback URLs and loopback/private addresses "
                                       "(development only)", shown="off")
    metrics_addr: str = _var("LONGSONG_METRICS_ADDR", "", _text,
                             "worker: `host:port` of its Prometheus `/metrics` (the API serves `/metrics` on "
                             "its own port)", shown="off")
    log_format: str = _var("LONGSONG_LOG_FORMAT", "json", _choice("json", "text"),
                           "log lines: `json` (one object per line) or `text` (the dev stack)")
    # The quality gate's limits: one LONGSONG_GATE_<NAME> variable per Thresholds field (read by the CPU worker).
    thresholds: Thresholds = field(default_factory=Thresholds, metadata={"env": GATE_PREFIX + "*"})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Parse every variable of `env` (default: os.environ); unset or empty means the default."""
        if env is None:
            import os

            env = os.environ
        values: dict[str, Any] = {"thresholds": _thresholds(env)}
        for f in fields(cls):
            raw = env.get(f.metadata["env"], "")
            if raw.strip() and "parse" in f.metadata:
                values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
        settings = replace(cls(**values), **overrides)
        if settings.storage_timeout_s >= settings.heartbeat_timeout_s:
            raise SettingsError(
                f"LONGSONG_STORAGE_TIMEOUT_S={settings.storage_timeout_s:g} must be under LONGSONG_HEARTBEAT_TIMEOUT_S="
                f"{settings.heartbeat_timeout_s:g}: a storage call may not outlast an activity's heartbeat timeout")
        return settings

    @property
    def storage_url(self) -> str:
        return self.storage or (self.home / "objects").as_uri()

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'longsong.db'}"

    @property
    def web_ui(self) -> str:
        return self.ui_url or f"http://localhost:{self.dev_ui_port}"

    @property
    def watermark_secret(self) -> bytes:
        return self.watermark_key.encode()


def _thresholds(env: Mapping[str, str]) -> Thresholds:
    """LONGSONG_GATE_<FIELD> for each Thresholds field: a number, like its default."""
    values = {}
    for f in fields(Thresholds):
        name = GATE_PREFIX + f.name.upper()
        raw = env.get(name, "")
        if raw.strip():
            values[f.name] = _number(-120, 0)(name, raw) if f.default < 0 else _number(0, 1e6)(name, raw)
    return Thresholds(**values)


def variables() -> list[str]:
    plain = [f.metadata["env"] for f in fields(Settings) if "parse" in f.metadata]
    return plain + [GATE_PREFIX + f.name.upper() for f in fields(Thresholds)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a literal bar inside a table cell


def markdown_table() -> str:
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    rows += [f"| `{f.metadata['env']}` | {f.metadata['doc']} | {f.metadata['shown']} |" for f in fields(Settings)
             if "parse" in f.metadata]
    rows += [f"| `{GATE_PREFIX}{f.name.upper()}` | quality gate: {_cell(f.metadata['doc'])} | `{f.default:g}` |"
             for f in fields(Thresholds)]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
