//! warren-tests: end-to-end and fault-injection tests against the real RabbitMQ and
//! PostgreSQL. The tests live in `e2e/` as one test binary; this library is empty.
