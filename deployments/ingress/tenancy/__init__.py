"""Tenancy: API keys with policies (keys.py), shared token buckets (buckets.py), admission and
OpenAI's rate-limit contract (quota.py), and model calls charged to the caller (metering.py)."""
