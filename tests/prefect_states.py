"""Final states of task runs, read back from the Prefect API for assertions on caching."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId


def task_states(flow_run_id, settle_seconds: float = 30.0) -> dict[str, str]:
    """task run name -> final state name (Completed, Cached, ...) for one flow run.

    Task runs reach the API as events, flushed in the background: poll until there are runs,
    every run has a final state, and no new run has appeared for a second.
    """
    deadline = time.monotonic() + settle_seconds
    previous = -1
    while True:
        runs = []
        with get_client(sync_client=True) as client:
            while page := client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=len(runs)
            ):
                runs += page
        final = all(r.state is not None and r.state.is_final() for r in runs)
        if (runs and final and len(runs) == previous) or time.monotonic() > deadline:
            return {r.name: (r.state.name if r.state else "None") for r in runs}
        previous = len(runs)
        time.sleep(1.0)


def all_task_states(parent_flow_run_id, subflows: int) -> dict[str, str]:
    """Task states of a flow run and of its ``subflows`` subflow runs."""
    deadline = time.monotonic() + 30
    while True:  # subflow runs reach the API as events too
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id]))
            )
        if len(children) >= subflows or time.monotonic() > deadline:
            break
        time.sleep(1)
    states: dict[str, str] = {}
    for run_id in [parent_flow_run_id, *[c.id for c in children]]:
        states.update(task_states(run_id))
    return states


def by_stage(states: dict[str, str]) -> dict[str, set[str]]:
    """Group task run states by the stage their name starts with (``quality-part-00001`` -> quality)."""
    out: dict[str, set[str]] = {}
    for name, state in states.items():
        out.setdefault(name.split("-")[0], set()).add(state)
    return out


def retry_delays(flow_run_id, prefix: str) -> list[float]:
    """Seconds each retry of the flow run's task runs named ``prefix...`` was scheduled to wait.

    Read from the AwaitingRetry states Prefect recorded (scheduled time minus the state's own
    time): the delay the task actually used, not one measured on a clock.
    """
    delays = []
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200)
        for run in runs:
            if not run.name.startswith(prefix):
                continue
            for state in client.read_task_run_states(run.id):
                if state.name == "AwaitingRetry" and state.state_details.scheduled_time is not None:
                    delays.append((state.state_details.scheduled_time - state.timestamp).total_seconds())
    return delays
