"""Consent capabilities: UCAN 1.0 envelopes, policy language, chain validation, consent requests. Pure."""
