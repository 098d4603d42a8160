"""User feedback on answers: ``POST /v1/feedback`` (see ``service``)."""

from __future__ import annotations

from gateway.feedback.service import FeedbackBody, FeedbackService, StoredFeedback

__all__ = ["FeedbackBody", "FeedbackService", "StoredFeedback"]
