"""run: the whole gated flow on one machine, each stage as its own command would run it."""

from __future__ import annotations

from pipeline.core.config import Params
from pipeline.stages.gate import gate_stage
from pipeline.stages.release import promote_stage, register_stage
from pipeline.stages.smoke import smoke_stage
from pipeline.stages.training import train_stage


def run_all(params: Params) -> str:
    """The whole flow: train, gate, register, smoke, promote. Returns the promoted version."""
    run_id = train_stage(params)
    gate_stage(params, run_id)
    version = register_stage(params, run_id)
    smoke_stage(params, version)
    promote_stage(params, version)
    return version
