"""REST endpoints as a source: one poll fetches an endpoint's pages of JSON records.

Runs on the driver. :func:`poll` is stateless between calls: what it needs to continue (the
``since`` value and the ``resume`` dict) is passed in by the caller, who keeps it in its offsets.
"""

from connectors.rest.client import EndpointError, PollResult, mask_url, poll

__all__ = ["EndpointError", "PollResult", "mask_url", "poll"]
