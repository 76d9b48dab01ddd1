"""AWS Lambda list prices that ``lambdalite status --cost`` and ``/metrics`` compare against.

One dated table, to edit when AWS changes its prices. Figures: us-east-1, on-demand, the first
duration tier (AWS charges less per GB-second beyond 6 billion GB-s a month on x86 and 7.5 billion
on Arm; lambdalite does not apply those tiers). Source: https://aws.amazon.com/lambda/pricing/.
"""

from __future__ import annotations

from datetime import date

AS_OF = date(2026, 12, 6)  # the day these figures were written down
REGION = "us-east-1"
USD_PER_MILLION_REQUESTS = 0.20
USD_PER_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
# Per account and month, x86 and Arm together.
FREE_REQUESTS_PER_MONTH = 1_000_000
FREE_GB_SECONDS_PER_MONTH = 400_000
