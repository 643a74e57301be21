// Preload for scenario F of run.sh: the official OpenTelemetry Node SDK with HTTP
// auto-instrumentation (server spans for incoming requests, parented by their `traceparent`),
// exporting OTLP/HTTP protobuf to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the receiver run.sh starts).
// Spans are exported one by one so that the check does not wait for a batch.
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { SimpleSpanProcessor } = require('@opentelemetry/sdk-node').tracing;

const sdk = new NodeSDK({
  serviceName: 'server-everything',
  spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter())],
  instrumentations: [new HttpInstrumentation()],
});
sdk.start();
process.on('SIGTERM', () => sdk.shutdown().finally(() => process.exit(0)));
