"""torchrt's contract: every name that crosses a process boundary, in one place.

Coordinator, rendezvous handler, workers, the CLI and (later) the monitor are
separate processes that agree on names: the control ops a peer may send, the
push kinds the coordinator sends unasked, the error codes of its replies, the
roles a connection can take and what each may do, the ``TORCHRT_*``
environment variables a handler hands to its workers, the layout of keys in
the job's c10d store, and every event type of the run directory's
``events.jsonl`` with its fields. All of them are defined here and nowhere
else; producers and consumers import them. ``docs/events.md`` is generated
from :data:`EVENTS` (``python -m torchrt.contract``) and a test keeps it in
sync.

Trust follows the roles. A *node* (a torchrun agent's handler) may change
membership; a *worker* of the current round may report telemetry; an
*observer* (``torchrt status``, the monitor) may only read; an *operator*
(``torchrt stacks``) may also ask for the workers' stack dumps. Events carry an
:class:`Origin`: ``COORDINATOR`` events are the coordinator's own decisions
(``node_dead``, ``shutdown``, rounds) and are never accepted from a peer;
``WORKER`` events are reports, accepted only from a worker connection, with
``rank`` and ``node_id`` stamped by the coordinator from that connection's
hello rather than taken from the report. Events marked ``rank0_only`` (a
commit) are accepted only from the rank that does that work. ``NODE`` events
(``node_stats``) are a node handler's reports, ``node_id`` stamped from its
connection.

This module imports nothing of torch or of the rest of torchrt, so every side
(including a broken install's ``torchrt doctor``) can read it.
"""

from __future__ import annotations

import dataclasses
import enum
import sys

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "EVENTS",
    "JOB_DEFAULTS",
    "JobDefaults",
    "LIVE_PUSH",
    "NODE_REPORTS",
    "Code",
    "Env",
    "EventSpec",
    "EventType",
    "EVENT_LEVELS",
    "Level",
    "Op",
    "Origin",
    "PROTOCOL_VERSION",
    "Push",
    "STACK_DUMP_TIMEOUT_S",
    "STEP_REPORTS",
    "StackAnswer",
    "ROLE_OPS",
    "Role",
    "barrier_key",
    "events_markdown",
    "restart_store_prefix",
    "round_store_prefix",
    "worker_gone_key",
]

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 29400  # torchrun's own default rendezvous port


@dataclasses.dataclass(frozen=True)
class JobDefaults:
    """Defaults of the ``job`` a node describes in its hello (from ``--rdzv-conf`` or YAML); the
    coordinator uses the same value for a key a hello leaves out. Seconds; c10d's in comments."""

    last_call_timeout: float = 1.0   # c10d: 30 s (torchrt forms a round at once when nobody else can come)
    rejoin_timeout: float = 30.0     # a re-form waits this long for live participants of the last round
    join_timeout: float = 900.0      # torchrun's own default rendezvous timeout (c10d's handler alone: 600 s)
    heartbeat_timeout: float = 2.5   # c10d: keep_alive_interval 5 s x keep_alive_max_attempt 3
    backend: str = "auto"            # the workers' process group: gloo, or nccl when every node has CUDA


JOB_DEFAULTS = JobDefaults()


# ------------------------------------------------------------------ connections
class _Name(str, enum.Enum):
    """A name on the wire: compares, hashes, formats and serialises as its plain string."""

    def __str__(self) -> str:
        return self.value


class Role(_Name):
    """What a connection says it is in its hello."""

    NODE = "node"          # a torchrun agent's rendezvous handler
    WORKER = "worker"      # a training process started by torchrun (torchrt.init)
    OBSERVER = "observer"  # torchrt status, doctor, the monitor: read-only
    OPERATOR = "operator"  # torchrt stacks: reads, and may act on the job's processes (a stack dump)


class Op(_Name):
    """Control operations a peer sends (``{"op": ..., "id": ...}``)."""

    HELLO = "hello"
    JOIN = "join"
    READY = "ready"  # a node confirms the round its join got; answered once every participant did
    LEAVE = "leave"
    CLOSE = "close"
    HEARTBEAT = "heartbeat"
    PING = "ping"
    STATUS = "status"
    SUBSCRIBE = "subscribe"
    TELEMETRY = "telemetry"      # reports; a worker sends most without an id: no reply (torchrt.telemetry.reporter)
    STACKS = "stacks"            # a worker's answer to a dump_stacks push (no id: it gets no reply)
    DUMP_STACKS = "dump_stacks"  # take the Python stacks of one rank or of every rank


# The ops each role may send after its hello; anything else is answered with Code.FORBIDDEN.
ROLE_OPS: dict[Role, frozenset[Op]] = {
    Role.NODE: frozenset({Op.JOIN, Op.READY, Op.LEAVE, Op.CLOSE, Op.HEARTBEAT, Op.PING, Op.STATUS, Op.TELEMETRY}),
    Role.WORKER: frozenset({Op.TELEMETRY, Op.STACKS, Op.HEARTBEAT, Op.PING}),
    Role.OBSERVER: frozenset({Op.PING, Op.STATUS, Op.SUBSCRIBE}),
    Role.OPERATOR: frozenset({Op.PING, Op.STATUS, Op.SUBSCRIBE, Op.DUMP_STACKS}),
}
MEMBERSHIP_OPS = frozenset({Op.HELLO, Op.JOIN, Op.LEAVE, Op.CLOSE})


class Push(_Name):
    """Messages the coordinator sends unasked (``{"push": ...}``, no ``id``)."""

    STATE = "state"      # to nodes: current round, nodes waiting, closed
    EVENT = "event"      # to subscribers: one logged event
    PREVIEW = "preview"  # to subscribers: a data sample rendering (not logged)
    METRIC = "metric"    # to subscribers: a user scalar (not logged)
    STEP = "step"        # to subscribers: a rank's step report of the last second (not logged)
    NODE_STATS = "node_stats"  # to subscribers: a node's sample of itself and its workers (not logged)
    DUMP_STACKS = "dump_stacks"  # to a worker: answer {"request": ID} with op stacks (torchrt.telemetry.stacks)
    LOST = "lost"        # delivered locally by a client when its connection ends; never on the wire


class Code(_Name):
    """Error codes of a failed reply (``{"ok": false, "code": ..., "error": ...}``)."""

    REJECTED = "rejected"    # wrong token, other run id, mismatched job shape
    CLOSED = "closed"        # the rendezvous is closed
    TIMEOUT = "timeout"      # not enough nodes joined in time
    PROTOCOL = "protocol"    # malformed message, unknown op, no hello yet
    FORBIDDEN = "forbidden"  # the role of this connection may not do that
    SUPERSEDED = "superseded"  # the round to confirm is no longer the one to start: join again


class StackAnswer(_Name):
    """What one rank gave to a stack dump (``dump_stacks``)."""

    ANSWERED = "answered"    # its stacks came back in time
    ERROR = "error"          # it answered, but could not take its stacks (the answer says why)
    NO_ANSWER = "no_answer"  # connected, but no answer within the dump's timeout (C code holding the GIL?)
    GONE = "gone"            # its worker disconnected: it exited or died (answered at once)
    UNKNOWN = "unknown"      # no worker of the current round has that rank


STACK_DUMP_TIMEOUT_S = 2.0  # how long a dump waits for the ranks' answers


# ------------------------------------------------------------------ environment
class Env:
    """``TORCHRT_*`` environment variables: name -> meaning (see :data:`ENV_DOCS`)."""

    PREFIX = "TORCHRT_"
    # exported by the rendezvous handler into the agent's environment, inherited by its workers
    ENDPOINT = "TORCHRT_ENDPOINT"
    STORE = "TORCHRT_STORE"
    RUN_ID = "TORCHRT_RUN_ID"
    ROUND = "TORCHRT_ROUND"
    BACKEND = "TORCHRT_BACKEND"
    NODE_ID = "TORCHRT_NODE_ID"
    RUN_DIR = "TORCHRT_RUN_DIR"
    TOKEN = "TORCHRT_TOKEN"
    # read from the user's environment
    TOKEN_FILE = "TORCHRT_TOKEN_FILE"
    RUNS_DIR = "TORCHRT_RUNS_DIR"
    LOG_LEVEL = "TORCHRT_LOG_LEVEL"
    MONITOR = "TORCHRT_MONITOR"
    # exported by `torchrt run` so workers read the same config
    CONFIG = "TORCHRT_CONFIG"
    CONFIG_SET = "TORCHRT_CONFIG_SET"
    # tests only: make a checkpoint writer hang at a chosen point
    CHECKPOINT_TEST_HANG = "TORCHRT_CHECKPOINT_TEST_HANG"
    # the issue's own name, not TORCHRT_*: `DEMO_MODE=true torchrt coordinator` also starts the demo job
    DEMO_MODE = "DEMO_MODE"


ENV_DOCS: dict[str, str] = {
    Env.ENDPOINT: "coordinator endpoint HOST:PORT (handler -> workers)",
    Env.STORE: "HOST:PORT of the coordinator's c10d store (handler -> workers)",
    Env.RUN_ID: "the job's run id (handler -> workers)",
    Env.ROUND: "the round the workers were started for (handler -> workers)",
    Env.BACKEND: "process-group backend chosen for the job: gloo or nccl (handler -> workers)",
    Env.NODE_ID: "the node id of the worker's agent (handler -> workers)",
    Env.RUN_DIR: "the run directory of the coordinator (handler -> workers)",
    Env.TOKEN: "the job's shared secret (user -> CLI and handler; handler -> workers)",
    Env.TOKEN_FILE: "a file holding the job's shared secret (user -> CLI and handler)",
    Env.RUNS_DIR: "where run directories go by default (user)",
    Env.LOG_LEVEL: "log level of the torchrt CLI (user)",
    Env.MONITOR: "`off`: `torchrt run` and `torchrt coordinator` start no monitor unless given --monitor (user)",
    Env.CONFIG: "the YAML config `torchrt run` started the job with (runner -> workers)",
    Env.CONFIG_SET: "its --set overrides as a JSON list (runner -> workers)",
    Env.CHECKPOINT_TEST_HANG: "test hook: stage at which a checkpoint writer hangs",
    Env.DEMO_MODE: "`true`: `torchrt coordinator` also starts the demo job (launch/demo.py) (user)",
}


# ------------------------------------------------------------------ store keys
def round_store_prefix(run_id: str, round_number: int) -> str:
    """Key prefix under which everything of one round lives in the coordinator's store."""
    return f"torchrt/{run_id}/round{round_number}/"


def restart_store_prefix(restart_count: int | str) -> str:
    """Key prefix of one restart generation in plain torchrun's agent store (no coordinator)."""
    return f"torchrt/restart{restart_count}/"


def worker_gone_key(run_id: str, round_number: int, rank: int) -> str:
    """Store key the coordinator sets when the worker of ``rank`` in a round disconnected from it
    (its process exited or died): ranks waiting on that worker stop waiting."""
    return f"{round_store_prefix(run_id, round_number)}workers/gone/{rank}"


def demo_fault_key(run_id: str, fault: str) -> str:
    """Store key counting the times the demo job reached its fault ``fault`` (``kill_worker``, ...);
    it lives outside any round, so the fault fires once per job, not again after a restart."""
    return f"torchrt/{run_id}/demo/faults/{fault}"


def barrier_key(prefix: str, name: str) -> str:
    """The one ever-growing counter of ``torchrt.barrier(name)`` under a round's or generation's prefix."""
    return f"{prefix}barrier/{name}"


# ------------------------------------------------------------------ events
class Origin(_Name):
    """Who may put an event into the record."""

    COORDINATOR = "coordinator"  # the coordinator's own decisions; never accepted from a peer
    WORKER = "worker"            # reported by a worker of the current round (rank stamped by the coordinator)
    NODE = "node"                # reported by a node's rendezvous handler (node_id stamped by the coordinator)


class EventType(_Name):
    """Every event type of ``events.jsonl`` (and of the live push stream)."""

    # coordinator lifecycle
    COORDINATOR_STARTED = "coordinator_started"
    COORDINATOR_RESTARTED = "coordinator_restarted"
    INSECURE_BIND = "insecure_bind"
    JOB_CONFIGURED = "job_configured"
    SHUTDOWN = "shutdown"
    ERROR = "error"
    RUN_DIR_ERROR = "run_dir_error"
    # membership and rounds
    NODE_JOINED = "node_joined"
    NODE_WAITING = "node_waiting"
    NODE_LEFT = "node_left"
    NODE_DEAD = "node_dead"
    NODE_REJECTED = "node_rejected"
    ROUND_STARTED = "round_started"
    ROUND_COMPLETED = "round_completed"
    ROUND_TIMEOUT = "round_timeout"
    RESTART = "restart"
    RENDEZVOUS_CLOSED = "rendezvous_closed"
    # workers
    WORKER_STARTED = "worker_started"
    WORKER_STOPPED = "worker_stopped"
    TELEMETRY_DROPPED = "telemetry_dropped"
    REPORT_REFUSED = "report_refused"
    BARRIER = "barrier"
    METRIC = "metric"
    STEP = "step"
    STEP_PROGRESS = "step_progress"
    # nodes and their processes (the agent-side handler's sampler)
    NODE_STATS = "node_stats"
    NODE_STATUS = "node_status"
    # alerts (the coordinator's decisions on the ranks' step reports, torchrt.view.alerts)
    RANK_STRAGGLING = "rank_straggling"
    RANK_RECOVERED = "rank_recovered"
    RANK_STALLED = "rank_stalled"
    # data
    DATASET_REGISTERED = "dataset_registered"
    DATA_RESUMED = "data_resumed"
    DATA_PROGRESS = "data_progress"
    DATA_TIMING = "data_timing"
    DATA_PREVIEW = "data_preview"
    # checkpoints
    CHECKPOINT_SAVED = "checkpoint_saved"
    CHECKPOINT_COMMITTED = "checkpoint_committed"
    CHECKPOINT_FAILED = "checkpoint_failed"
    CHECKPOINT_SKIPPED = "checkpoint_skipped"
    CHECKPOINT_RESTORED = "checkpoint_restored"
    # stack dumps
    STACKS_DUMPED = "stacks_dumped"


class Level(_Name):
    """How much an event matters to whoever reads the record (the monitor's Logs page and timeline)."""

    ERROR = "error"      # something failed: a node died, a checkpoint failed, a rank stalled
    WARNING = "warning"  # something to look at: a straggler, refused or dropped reports, a restart
    INFO = "info"        # the job going its way


# The level of every event type that is not INFO; the problems the alerts fold records
# (torchrt.view.alerts.AlertsFold) are all here, each an error or a warning.
EVENT_LEVELS: dict[EventType, Level] = {
    **dict.fromkeys((EventType.ERROR, EventType.RUN_DIR_ERROR, EventType.NODE_DEAD, EventType.ROUND_TIMEOUT,
                     EventType.CHECKPOINT_FAILED, EventType.RANK_STALLED), Level.ERROR),
    **dict.fromkeys((EventType.INSECURE_BIND, EventType.NODE_REJECTED, EventType.RESTART,
                     EventType.TELEMETRY_DROPPED, EventType.REPORT_REFUSED, EventType.RANK_STRAGGLING,
                     EventType.CHECKPOINT_SKIPPED), Level.WARNING),
}


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """One event type: who may record it, whether it is logged, and its fields.

    Every event also has ``seq`` (contiguous from 1 across the run, also across a coordinator
    restart), ``ts`` (Unix seconds) and ``type``. Worker reports also get ``rank`` and
    ``node_id`` from the reporting connection.
    """

    type: EventType
    origin: Origin
    doc: str
    fields: dict[str, str]
    live: Push | None = None  # not logged: folded into the view and pushed to subscribers as this kind
    rank0_only: bool = False  # a worker report accepted only from rank 0 (who does that work)

    @property
    def logged(self) -> bool:
        """Whether the event is appended to ``events.jsonl`` (else it is live only, see ``live``)."""
        return self.live is None

    @property
    def level(self) -> Level:
        """How much it matters to a reader of the record (:data:`EVENT_LEVELS`)."""
        return EVENT_LEVELS.get(self.type, Level.INFO)


_C, _W, _N = Origin.COORDINATOR, Origin.WORKER, Origin.NODE
# The fields of a rank's step report (torchrt.telemetry.step): one per reporter window, not per step.
_STEP = {"step": "the rank's last step number", "steps": "steps in the window", "window_s": "seconds the window's "
         "steps took", "step_ms": "mean step time", "step_max_ms": "slowest step", "busy_ms": "mean step time less "
         "the waits below", "data_wait_ms": "mean wait for data per step (torchrt.data)", "barrier_ms": "mean "
         "torchrt.barrier wait per step", "checkpoint_ms": "mean checkpoint stall per step", "samples": "samples in "
         "the window", "samples_per_s": "samples / window_s", "loss": "last loss", "scalars": "last value of each "
         "user scalar", "epoch": "data epoch (torchrt.data)", "position": "global position in the epoch",
         "dataset": "the pipeline that fed the last step", "data_samples": "real samples that pipeline gave this "
         "rank in the epoch (as data_progress's samples)", "data_session": "that pipeline's session (as "
         "data_progress's)"}
# The fields of a node's sample (torchrt.telemetry.node): the node, and each of its worker processes.
_NODE = {"node_id": "the node (stamped)", "cpu_percent": "node CPU, % of all cores", "cpus": "logical cores",
         "mem_percent": "node memory used", "mem_used": "bytes", "mem_total": "bytes", "disk_read_bps": "bytes/s",
         "disk_write_bps": "bytes/s", "net_recv_bps": "bytes/s", "net_sent_bps": "bytes/s",
         "gpus": "per GPU: index, util_percent, mem_used, mem_total",
         "workers": "per worker process: pid, local_rank, rank, state, cpu_percent, rss, gpu_mem, exit_code (when "
         "known)"}
_CKPT = {"step": "training step", "rank": "reporting rank", "world_size": "ranks of the saving job",
         "path": "checkpoint step directory"}

EVENTS: dict[EventType, EventSpec] = {spec.type: spec for spec in (
    EventSpec(EventType.COORDINATOR_STARTED, _C, "the coordinator is listening",
              {"endpoint": "HOST:PORT of the control port", "store_port": "port of the c10d store",
               "pid": "coordinator process id", "run_id": "run id, if fixed at start"}),
    EventSpec(EventType.COORDINATOR_RESTARTED, _C,
              "a coordinator started on a run directory that an earlier one wrote: the record goes on",
              {"previous_pid": "pid of the earlier coordinator", "last_seq": "last event seq it wrote",
               "last_round": "highest round number it used (rounds go on after it)",
               "clean": "whether it had recorded its shutdown",
               "workers_gone": "ranks of the earlier incarnation marked gone"}),
    EventSpec(EventType.INSECURE_BIND, _C,
              "the coordinator listens on a non-loopback address without a token",
              {"host": "the address bound", "warning": "what this means"}),
    EventSpec(EventType.JOB_CONFIGURED, _C, "the first node's hello fixed the job's shape and timings",
              {"run_id": "run id", "min_nodes": "nnodes lower bound", "max_nodes": "nnodes upper bound",
               "last_call_timeout": "seconds", "rejoin_timeout": "seconds", "join_timeout": "seconds",
               "heartbeat_timeout": "seconds", "backend": "auto, gloo or nccl",
               "alerts": "the straggler and stall rules' settings (torchrt.view.alerts.AlertSettings)"}),
    EventSpec(EventType.SHUTDOWN, _C, "the coordinator stopped cleanly",
              {"reason": "why (stopped, owner gone, signal)"}),
    EventSpec(EventType.ERROR, _C, "an internal error of the coordinator",
              {"where": "the part that failed", "error": "what happened"}),
    EventSpec(EventType.RUN_DIR_ERROR, _C,
              "the run directory could not be written for a while (disk full, read-only); it caught up",
              {"error": "the first write error", "failed_writes": "writes that failed",
               "since": "Unix time of the first failure", "parts": "what failed: events.jsonl, state.json, tensorboard",
               "lost_events": "events dropped from memory before they could be written"}),
    EventSpec(EventType.NODE_JOINED, _C, "a node said hello (returning: it had been dead or had left)",
              {"node": "node id", "hostname": "host name", "addr": "address", "nproc": "workers per node",
               "device_kind": "cpu or cuda", "device_count": "devices", "returning": "true when back"}),
    EventSpec(EventType.NODE_WAITING, _C, "a node asked for the next round",
              {"node": "node id", "round": "the round it had"}),
    EventSpec(EventType.NODE_LEFT, _C, "a node said goodbye, or went while the job was being stopped",
              {"node": "node id", "reason": "why, when the job was being stopped (absent: goodbye)"}),
    EventSpec(EventType.NODE_DEAD, _C, "a node's connection closed or it fell silent",
              {"node": "node id", "reason": "connection lost or heartbeat timeout",
               "silent_s": "seconds since it was last heard"}),
    EventSpec(EventType.NODE_REJECTED, _C, "a hello or op was refused",
              {"op": "the op", "error": "why"}),
    EventSpec(EventType.ROUND_STARTED, _C, "a new round is needed",
              {"round": "its number", "reason": "why"}),
    EventSpec(EventType.ROUND_COMPLETED, _C, "a round formed",
              {"round": "number", "world_size": "nodes", "participants": "node ids by group rank",
               "reason": "why it was needed", "backend": "gloo or nccl", "dropped": "nodes left out",
               "waiting_s": "until min nodes", "last_call_s": "last call", "total_s": "start to formed"}),
    EventSpec(EventType.ROUND_TIMEOUT, _C, "a node waited join_timeout for a round",
              {"node": "node id", "waited_s": "seconds", "waiting": "nodes waiting",
               "min_nodes": "nodes required"}),
    EventSpec(EventType.RESTART, _C, "a participant asked for a new round (its agent restarted workers)",
              {"node": "node id", "round": "current round", "reason": "cause given by the node"}),
    EventSpec(EventType.RENDEZVOUS_CLOSED, _C, "the rendezvous was closed: no more rounds",
              {"by": "the node that closed it"}),
    EventSpec(EventType.WORKER_STARTED, _C, "a worker connected (torchrt.init)",
              {"rank": "global rank", "local_rank": "rank on its node", "world_size": "ranks",
               "local_world_size": "ranks on its node", "node_id": "its agent", "round": "round",
               "pid": "process id", "backend": "gloo or nccl"}),
    EventSpec(EventType.WORKER_STOPPED, _C, "a worker's connection closed (it exited or died)",
              {"rank": "global rank", "node_id": "its agent", "pid": "process id",
               "reason": "disconnected, or coordinator restarted"}),
    EventSpec(EventType.REPORT_REFUSED, _C,
              "worker reports the coordinator refused (unknown type, not the worker's to report); "
              "at most one per connection and type",
              {"rank": "reporting rank", "node_id": "its agent", "refused_type": "the type sent",
               "why": "reason"}),
    EventSpec(EventType.TELEMETRY_DROPPED, _W, "a worker's telemetry queue was full",
              {"count": "events dropped"}),
    EventSpec(EventType.BARRIER, _W, "torchrt.barrier completions of one name (rank 0, per second)",
              {"name": "barrier name", "call": "number of the last call", "world_size": "ranks", "completions": "calls",
               "latency_us": "slowest", "p50_us": "median", "p99_us": "99th percentile", "max_us": "slowest"}),
    EventSpec(EventType.METRIC, _W, "torchrt.log_metric scalar", {"name": "tag", "value": "number",
                                                                  "step": "step"}, live=Push.METRIC),
    EventSpec(EventType.STEP, _W, "torchrt.step figures of one reporter window (about 1 s) in which the rank "
              "stepped", _STEP, live=Push.STEP),
    EventSpec(EventType.STEP_PROGRESS, _W, "the same report, logged: every 10 s per rank, when the epoch changes "
              "and as the rank's last word", _STEP),
    EventSpec(EventType.NODE_STATS, _N, "one sample of a node and of its worker processes (about 1 s; "
              "torchrt.telemetry.node)", _NODE, live=Push.NODE_STATS),
    EventSpec(EventType.NODE_STATUS, _N, "the same sample, logged: the node's first, one when its workers change "
              "(a new process, one that exited, an exit code learnt), one every 30 s, and its last word", _NODE),
    EventSpec(EventType.RANK_STRAGGLING, _C, "a rank's step time or data wait stayed well above the other ranks' median",
              {"rank": "the rank", "node_id": "its node", "measure": "what stood out: step_ms or data_wait_ms",
               "ratio": "its value / the others' median (null: they wait not at all)", "value_ms": "its value",
               "median_ms": "the others' median", "step_ms": "its step time", "reports": "consecutive slow reports"}),
    EventSpec(EventType.RANK_RECOVERED, _C, "a straggling or stalled rank is back to normal",
              {"rank": "the rank", "node_id": "its node", "was": "rank_straggling or rank_stalled",
               "step": "its step now", "after_s": "seconds the alert lasted"}),
    EventSpec(EventType.RANK_STALLED, _C, "a rank made no step progress for longer than its stall threshold",
              {"rank": "the rank", "node_id": "its node", "step": "its last step", "silent_s": "seconds since its "
               "step last advanced", "threshold_s": "the threshold: max(floor, factor x its median step time)"}),
    EventSpec(EventType.DATASET_REGISTERED, _W, "a rank built a pipeline (see docs/data.md)",
              {"dataset": "name", "size": "samples", "shards": "shards", "assignment": "this rank's part"}),
    EventSpec(EventType.DATA_RESUMED, _W, "a rank loaded a saved data state",
              {"dataset": "name", "epoch": "epoch", "position": "global position",
               "saved_world_size": "world size that saved it"}),
    EventSpec(EventType.DATA_PROGRESS, _W, "periodic progress through the epoch",
              {"dataset": "name", "epoch": "epoch", "position": "global position", "size": "epoch size",
               "assignment": "as an epoch begins that the rank had not described: the part it reads"}),
    EventSpec(EventType.DATA_TIMING, _W, "periodic read/map/wait timings",
              {"dataset": "name", "samples_per_s": "rate", "wait_fraction": "time waiting for data"}),
    EventSpec(EventType.DATA_PREVIEW, _W, "a rendered sample (see torchrt.data.preview)",
              {"dataset": "name", "epoch": "epoch", "index": "sample index"}, live=Push.PREVIEW),
    EventSpec(EventType.CHECKPOINT_SAVED, _W, "a rank's shard of a checkpoint is durable",
              {**_CKPT, "bytes": "bytes", "stall_s": "training stall", "write_s": "write time",
               "mb_s": "throughput"}),
    EventSpec(EventType.CHECKPOINT_COMMITTED, _W, "every shard verified; the manifest is committed",
              {**_CKPT, "bytes": "total bytes", "total_s": "save to commit", "commit_s": "commit",
               "mb_s": "throughput", "deleted": "steps retired", "ranks": "per-rank figures"},
              rank0_only=True),
    EventSpec(EventType.CHECKPOINT_FAILED, _W, "a save failed on a rank",
              {**_CKPT, "stage": "where", "error": "what", "error_type": "exception class"}),
    EventSpec(EventType.CHECKPOINT_SKIPPED, _W, "a save or a restore of a step was skipped",
              {**_CKPT, "reason": "busy, missed_trigger, corrupt, ...", "detail": "why"}),
    EventSpec(EventType.CHECKPOINT_RESTORED, _W, "a rank restored a checkpoint",
              {**_CKPT, "saved_world_size": "world size that saved it", "bytes": "read", "read_s": "seconds",
               "mb_s": "throughput"}),
    EventSpec(EventType.STACKS_DUMPED, _C,
              "the Python stacks of ranks were taken (RUN_DIR/stacks/, see torchrt.view.stacks)",
              {"request": "dump number", "reason": "requested, or rank_stalled",
               "path": "the dump, relative to the run directory", "ranks": "ranks asked",
               "answered": "ranks whose stacks came back",
               "missing": "ranks that did not answer, by StackAnswer (gone, no_answer, ...)",
               "slowest_s": "seconds until the last answer"}),
)}

WORKER_REPORTS = frozenset(t for t, spec in EVENTS.items() if spec.origin is Origin.WORKER)
NODE_REPORTS = frozenset(t for t, spec in EVENTS.items() if spec.origin is Origin.NODE)
STEP_REPORTS = frozenset({EventType.STEP, EventType.STEP_PROGRESS})  # a rank's step report, live or logged
# Events that are not logged: each is folded into the view and pushed to subscribers as its kind.
LIVE_PUSH: dict[EventType, Push] = {t: spec.live for t, spec in EVENTS.items() if spec.live is not None}


def events_markdown() -> str:
    """docs/events.md, generated from :data:`EVENTS` (a test keeps the file in sync)."""
    lines = [
        "# Events",
        "",
        "<!-- Generated by `python -m torchrt.contract > docs/events.md` from torchrt/contract.py;"
        " do not edit by hand. -->",
        "",
        "Every line of `RUN_DIR/events.jsonl` is one JSON object with `seq` (contiguous from 1 for the "
        "whole run, also across a coordinator restart), `ts` (Unix seconds), `type` and the fields "
        "below. *coordinator* events are the coordinator's own decisions and are never accepted from "
        "a peer; *worker* events are reports of a worker of the current round, with `rank` and "
        "`node_id` stamped by the coordinator from the worker's connection; *node* events are reports of a "
        "node's rendezvous handler, with `node_id` stamped from its connection. Events that are not "
        "logged are kept in the state and pushed live only. *error* or *warning* after the origin is the "
        "event's level (what the monitor's Logs page makes stand out); every other event is *info*.",
        "",
    ]
    for spec in EVENTS.values():
        extra = [] if spec.logged else ["not logged"]
        if spec.rank0_only:
            extra.append("rank 0 only")
        if spec.level is not Level.INFO:
            extra.append(spec.level.value)
        suffix = f" ({', '.join(extra)})" if extra else ""
        lines += [f"## `{spec.type.value}`", "", f"*{spec.origin.value}*{suffix}: {spec.doc}.", ""]
        lines += ["| field | meaning |", "|---|---|"]
        lines += [f"| `{name}` | {meaning} |" for name, meaning in spec.fields.items()]
        lines.append("")
    lines += ["# Environment variables", "", "| variable | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in ENV_DOCS.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(events_markdown())
