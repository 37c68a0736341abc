"""--trace / --report for `fastjob run` and `fastjob parallel`: a Recorder
started once the pool is open and stopped before it is accounted for."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .pool import Pool, warn

if TYPE_CHECKING:
    from .parallel import JobRecord
    from ..trace import Recorder


class CliTrace:
    """Hooks that record the pool while the command(s) run."""

    def __init__(self, trace: str | None, report: str | None, label: str) -> None:
        self.trace = trace
        self.report = report
        self.label = label
        self.recorder: Recorder | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.trace or self.report)

    def start(self, pool: Pool, implicit: bool | None) -> None:
        from ..trace import Recorder

        try:
            self.recorder = Recorder(pool.server or pool.client, implicit=implicit, command=self.label).start()
        except ValueError as exc:  # a joined pool of unknown size
            warn(f"no trace recorded: {exc}")

    def job(self, record: JobRecord) -> None:
        if self.recorder is not None:
            self.recorder.add_span(
                record.command, record.start, record.end, args={"status": record.status, "pid": record.pid}
            )

    def stop(self) -> None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        summary = rec.stop()
        if self.trace:
            rec.write_trace(self.trace)
        if self.report:
            rec.write_report(self.report)
        sys.stderr.write(summary.format() + "\n")
