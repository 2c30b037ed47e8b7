"""The report's comparison table (and figures) as a W&B run in the sweep's group: offline unless WANDB_MODE says otherwise."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from genbench.report.tables import Summary, table_rows

log = logging.getLogger(__name__)


def log_report(summary: Summary, out: Path, images: list[Path], group: str, project: str) -> Path | None:
    """One ``job_type=report`` run in ``group`` holding ``comparison`` (a wandb.Table) and each figure; returns its folder."""
    import wandb

    rows = table_rows(summary)
    if not rows:
        log.info("W&B: no completed runs, no comparison table to log")
        return None
    columns = list(dict.fromkeys(k for row in rows for k in row))
    mode = os.environ.get("WANDB_MODE") or "offline"
    run = wandb.init(project=project, group=group, name=f"report-{group}", job_type="report", dir=str(out), mode=mode,
                     config={"sweep_group": group, "n_tables": len(summary.tables)})  # fmt: skip
    try:
        data = [[row.get(c) for c in columns] for row in rows]
        run.log({"comparison": wandb.Table(columns=columns, data=data)})
        for path in images:
            run.log({f"figures/{path.stem}": wandb.Image(str(path), caption=path.stem)})
        run.summary["n_runs"] = sum(len(t.runs) for t in summary.tables)
        run.summary["not_in_tables"] = len(summary.excluded) + len(summary.missing)
        folder = Path(run.dir).parent
    finally:
        run.finish()
    log.info("W&B (%s): comparison table logged in group %s (%s)", mode, group, folder)
    return folder
