"""Fairness between tenants: weighted service per tenant, Jain's index, max service gap.

Service follows VTC (Sheng et al., OSDI'24) with w_in = 1 and w_out = 2; a tenant's total is
the prompt tokens of its requests that got a first token plus 2 per delivered output token
(aborted requests included, rejected ones contribute nothing). With tenant weights, fairness
compares service / weight (weighted fair share). Jain's index runs over every tenant that
submitted a request; the exact definition of the service gap is in `service_gap`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from shunter.errors import ConfigError
from shunter.metrics.columns import RecordColumns
from shunter.metrics.service_events import SERVICE_WEIGHT_INPUT, SERVICE_WEIGHT_OUTPUT
from shunter.metrics.service_gap import max_service_gap
from shunter.metrics.stats import finite_or_none

__all__ = [
    "SERVICE_WEIGHT_INPUT",
    "SERVICE_WEIGHT_OUTPUT",
    "FairnessSummary",
    "jain_index",
    "max_service_gap",
    "summarize_fairness",
    "tenant_service",
    "tenant_weight_array",
]



@dataclass(frozen=True, slots=True)
class FairnessSummary:
    """Run-wide fairness; None where undefined (no tenants, or nobody was served)."""

    max_service_gap: float | None
    jain_index: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"max_service_gap": self.max_service_gap, "jain_index": self.jain_index}


def tenant_weight_array(cols: RecordColumns, weights: Mapping[str, float] | None) -> np.ndarray:
    """Per-tenant weights in `cols.tenant_names` order; tenants not in `weights` weigh 1."""
    weights = weights or {}
    for name, weight in weights.items():
        if not weight > 0:
            raise ConfigError(f"tenant weight for {name!r} must be > 0, got {weight}")
    return np.array([float(weights.get(name, 1.0)) for name in cols.tenant_names])


def tenant_service(cols: RecordColumns) -> np.ndarray:
    """Unweighted service per tenant: prompts of requests that got a first token + 2 per token."""
    served_prompt = np.where(cols.num_output_tokens > 0, cols.num_prompt_tokens, 0)
    per_request = (SERVICE_WEIGHT_INPUT * served_prompt
                   + SERVICE_WEIGHT_OUTPUT * cols.num_output_tokens)
    return np.bincount(cols.tenant_index, weights=per_request, minlength=cols.num_tenants)


def jain_index(values: np.ndarray) -> float | None:
    """Jain's index (sum x)^2 / (n sum x^2): 1 if all equal, 1/n if one gets all; None if all 0."""
    values = np.asarray(values, dtype=np.float64)
    square_sum = float(np.square(values).sum())
    if values.size == 0 or square_sum == 0:
        return None
    return finite_or_none(float(values.sum()) ** 2 / (values.size * square_sum))


def summarize_fairness(cols: RecordColumns,
                       tenant_weights: Mapping[str, float] | None = None) -> FairnessSummary:
    """Jain's index over per-tenant (weight-normalised) service and the max service gap."""
    weights = tenant_weight_array(cols, tenant_weights)
    return FairnessSummary(
        max_service_gap=max_service_gap(cols, weights),
        jain_index=jain_index(tenant_service(cols) / weights) if cols.num_tenants else None,
    )
