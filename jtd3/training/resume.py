"""What a resume loads and may change: the committed checkpoints of a run, the config keys that define its state, the
evaluation rows and checkpoints it supersedes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from jtd3.checkpoint import committed_steps
from jtd3.files import write_text_atomic

__all__ = ["ALARM_DIR", "ResumeCandidate", "is_state_key", "resume_candidates", "state_differences"]

ALARM_DIR = "alarms"  # run_dir/alarms/<step>: checkpoints saved by the explosion alarm, kept apart


@dataclasses.dataclass(frozen=True)
class ResumeCandidate:
    """A committed checkpoint a resume may load: ``directory`` is a checkpoint store, ``kind`` says which."""

    directory: Path
    step: int
    kind: str  # "regular" (run_dir/checkpoints) or "alarm" (run_dir/alarms/<step>[-k], saved by the alarm)

    @property
    def path(self) -> Path:
        return self.directory / str(self.step)


def resume_candidates(run_dir: str | os.PathLike, step: int | None = None) -> list[ResumeCandidate]:
    """The checkpoints a resume of ``run_dir`` tries, in order: the regular ones newest first (a damaged one
    falls back to the next; [] when the run stopped before its first checkpoint), or exactly step ``step`` (a
    regular checkpoint, else one saved by the alarm).

    Raises FileNotFoundError (one line) for a missing ``step``, or when only the alarm saved checkpoints.
    """
    run_dir = Path(run_dir)
    regular_dir = run_dir / "checkpoints"
    regular = committed_steps(regular_dir)
    alarms = []
    if (run_dir / ALARM_DIR).is_dir():
        for d in sorted((run_dir / ALARM_DIR).iterdir(), key=lambda p: p.name):
            alarms += [ResumeCandidate(d, s, "alarm") for s in committed_steps(d)]
    alarm_steps = sorted({c.step for c in alarms})
    alarm_note = (
        f"; the explosion alarm saved step(s) {alarm_steps} in {run_dir / ALARM_DIR} (kept apart: "
        "--resume-step N loads one)" if alarm_steps else ""
    )
    if step is None:
        if not regular and alarm_steps:
            raise FileNotFoundError(f"--resume {run_dir}: no committed checkpoint in {regular_dir}{alarm_note}")
        # [] when the run stopped before its first checkpoint: the resume starts it again from step 0
        return [ResumeCandidate(regular_dir, s, "regular") for s in reversed(regular)]
    if step in regular:
        return [ResumeCandidate(regular_dir, step, "regular")]
    matching = [c for c in alarms if c.step == step]
    if matching:
        return [max(matching, key=lambda c: c.directory.stat().st_mtime_ns)]
    raise FileNotFoundError(
        f"--resume-step {step}: no committed checkpoint at step {step} in {run_dir} (regular steps: {regular}"
        f"{', alarm steps: ' + str(alarm_steps) if alarm_steps else ''})"
    )


def flat_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for a nested config dict (lists are values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys a resume may change: everything else defines the saved state (agent and env keys, the seed that derives
# every episode seed and RNG stream, the replay layout) or would not take effect.
def is_state_key(key: str) -> bool:
    """True for a config key whose value the saved train state, replay or RNG streams depend on."""
    if key == "agent.per_layer_stats":  # --debug: extra statistics, not state
        return False
    return key.startswith(("agent.", "env.")) or key in STATE_TRAIN_KEYS


STATE_TRAIN_KEYS = ("train.seed", "train.replay.capacity", "train.actors.kind", "train.actors.num_envs")
ACTORS_BEFORE_THEY_WERE_RECORDED = {"train.actors.kind": "inline", "train.actors.num_envs": 1}


def state_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key (was X, now Y)`` for every state-defining key that differs between two resolved config dicts."""
    # runs recorded before train.actors existed had one inline environment
    a, b = {**ACTORS_BEFORE_THEY_WERE_RECORDED, **flat_config(recorded)}, flat_config(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if is_state_key(key) and a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key} (was {a.get(key, '<absent>')!r}, now {b.get(key, '<absent>')!r})")
    return out


def trim_eval_logs(run_dir: Path, step: int) -> None:
    """Drop the rows of eval.csv / eval.jsonl written after checkpoint ``step`` (by a killed process, or
    before a fallback; a row torn by a kill goes too): the resumed run evaluates those steps again, so no
    step appears twice."""

    def row_kept(row: list[str]) -> bool:
        try:
            return int(float(row[0])) <= step
        except (IndexError, ValueError):
            return False  # torn

    def line_kept(line: str) -> bool:
        try:
            return int(json.loads(line)["env_steps"]) <= step
        except (ValueError, KeyError, TypeError):
            return False  # torn

    path = run_dir / "eval.csv"
    if path.is_file():
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        if rows:
            keep = [rows[0]] + [r for r in rows[1:] if row_kept(r)]
            if len(keep) != len(rows):
                out = io.StringIO()
                csv.writer(out).writerows(keep)  # the csv module's \r\n, as append_csv_row writes
                write_text_atomic(path, out.getvalue())
                print(f"note: {path}: dropped {len(rows) - len(keep)} row(s) written after checkpoint {step}",
                      file=sys.stderr, flush=True)
    path = run_dir / "eval.jsonl"
    if path.is_file():
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        keep = [x for x in lines if line_kept(x)]
        if len(keep) != len(lines):
            write_text_atomic(path, "".join(x + "\n" for x in keep))


def move_aside(run_dir: Path, cand: ResumeCandidate, where: str) -> None:
    """Move checkpoint ``cand`` to ``run_dir/where/<step>`` (``<step>-<k>`` if taken), saying so."""
    target = run_dir / where / str(cand.step)
    k = 1
    while target.exists():
        k += 1
        target = run_dir / where / f"{cand.step}-{k}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(cand.path, target)
    print(f"note: moved checkpoint {cand.path} to {target}", file=sys.stderr, flush=True)
