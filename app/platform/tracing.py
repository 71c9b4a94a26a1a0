"""Optional OpenTelemetry tracing (off by default: OTEL_ENABLED=true turns it on).

One trace follows an order: the API request's span is the parent of the workflow start,
and Temporal's TracingInterceptor carries the context through the workflow, its child and
every activity. Spans go to OTLP/HTTP at OTEL_EXPORTER_OTLP_ENDPOINT when set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.client import Interceptor

    from app.platform.settings import Settings

_configured = False


def setup_tracing(
    settings: Settings, service: str, exporter: SpanExporter | None = None
) -> list[Interceptor]:
    """Install a tracer provider once per process; return the Temporal interceptors."""
    global _configured
    if not settings.otel_enabled:
        return []
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if not _configured:
        provider = TracerProvider(resource=Resource.create({"service.name": f"orders-{service}"}))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif settings.otel_exporter_otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        trace.set_tracer_provider(provider)
        _configured = True
    return [TracingInterceptor()]
