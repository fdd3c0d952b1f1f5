"""A deterministic, Telco-churn-shaped data set generated from a seed.

Same columns and value vocabularies as the public Telco customer churn data.
Churn is drawn from a logistic model driven by contract, tenure, charges,
services and payment method, plus noise, so a good classifier reaches an F1
around 0.6 and a trivial one does not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

YES_NO = np.array(["No", "Yes"])
ADD_ONS = [
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
]
PAYMENT_METHODS = [
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
]


def generate_churn(rows: int = 7043, seed: int = 42) -> pd.DataFrame:
    """Return `rows` customers; the same seed always gives the same frame."""
    rng = np.random.default_rng(seed)

    def flag(p: float | np.ndarray) -> np.ndarray:
        return rng.random(rows) < p

    senior = flag(0.16)
    partner = flag(0.48)
    dependents = flag(np.where(partner, 0.5, 0.1))
    # Tenure is U-shaped in the real data: many new and many long-standing customers.
    tenure = np.clip(np.round(72 * rng.beta(0.7, 0.65, rows)), 0, 72).astype(int)
    contract = _choice_by_tenure(rng, tenure)
    phone = flag(0.9)
    multiple = np.where(phone, YES_NO[flag(0.48).astype(int)], "No phone service")
    internet = rng.choice(["DSL", "Fiber optic", "No"], rows, p=[0.34, 0.44, 0.22])
    has_net = internet != "No"
    add_ons = {
        name: np.where(has_net, YES_NO[flag(p).astype(int)], "No internet service")
        for name, p in zip(ADD_ONS, [0.36, 0.44, 0.44, 0.37, 0.49, 0.5], strict=True)
    }
    paperless = flag(0.59)
    payment = rng.choice(PAYMENT_METHODS, rows, p=[0.34, 0.23, 0.22, 0.21])

    monthly = (
        20.0
        + np.where(phone, 0.0, -5.0)
        + np.where(multiple == "Yes", 5.0, 0.0)
        + np.select([internet == "DSL", internet == "Fiber optic"], [25.0, 48.0], 0.0)
        + sum(np.where(add_ons[n] == "Yes", 6.0, 0.0) for n in ADD_ONS)
        + rng.normal(0, 3, rows)
    )
    monthly = np.clip(monthly, 18.25, 118.75).round(2)
    total = (monthly * tenure * rng.normal(1.0, 0.03, rows)).round(2)
    # As in the public data, brand-new customers have a blank TotalCharges.
    total_text = np.where(tenure == 0, " ", total.astype(str))

    logit = (
        -0.85
        + np.select([contract == "Month-to-month", contract == "One year"], [1.3, 0.0], -1.4)
        - 0.045 * tenure
        + np.where(internet == "Fiber optic", 0.9, 0.0)
        + np.where(internet == "No", -0.7, 0.0)
        + np.where(payment == "Electronic check", 0.55, 0.0)
        + np.where(add_ons["OnlineSecurity"] == "Yes", -0.45, 0.0)
        + np.where(add_ons["TechSupport"] == "Yes", -0.45, 0.0)
        + np.where(paperless, 0.3, 0.0)
        + np.where(senior, 0.3, 0.0)
        + np.where(dependents, -0.25, 0.0)
        + 0.012 * (monthly - 65)
        + rng.normal(0, 1.0, rows)
    )
    churn = rng.random(rows) < 1 / (1 + np.exp(-logit))

    letters = rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), (rows, 5))
    ids = [f"{n:04d}-{''.join(chars)}" for n, chars in zip(rng.integers(0, 10_000, rows), letters, strict=True)]
    frame = pd.DataFrame(
        {
            "customerID": ids,
            "gender": rng.choice(["Female", "Male"], rows),
            "SeniorCitizen": senior.astype(int),
            "Partner": YES_NO[partner.astype(int)],
            "Dependents": YES_NO[dependents.astype(int)],
            "tenure": tenure,
            "PhoneService": YES_NO[phone.astype(int)],
            "MultipleLines": multiple,
            "InternetService": internet,
            **add_ons,
            "Contract": contract,
            "PaperlessBilling": YES_NO[paperless.astype(int)],
            "PaymentMethod": payment,
            "MonthlyCharges": monthly,
            "TotalCharges": total_text,
            "Churn": YES_NO[churn.astype(int)],
        }
    )
    return frame


def _choice_by_tenure(rng: np.random.Generator, tenure: np.ndarray) -> np.ndarray:
    """Longer-tenured customers hold longer contracts."""
    share = tenure / 72
    p_two = 0.02 + 0.45 * share
    p_one = 0.08 + 0.22 * share
    draw = rng.random(tenure.size)
    return np.where(draw < p_two, "Two year", np.where(draw < p_two + p_one, "One year", "Month-to-month"))
