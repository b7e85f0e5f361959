//! End-to-end tests: real RabbitMQ, real PostgreSQL, real worker runtime and binaries.
//! Each test makes its own database and RabbitMQ namespace (see warren-testkit).

mod admin;
mod alarm;
mod bad_input;
mod broker_accounts;
mod consumer_timeout;
mod crash_loop;
mod deploy_manifests;
mod fault_lab;
mod faults;
mod fencing;
mod idempotency;
mod limits;
mod metrics;
mod migrations;
mod outages;
mod pipeline;
mod poison;
mod privileges;
mod promotion_faults;
mod redelivery;
mod retention;
mod retries;
mod schedules;
mod scheduling;
mod shutdown;
mod support;
mod tls;
mod traces;
mod typed;
mod worker_ids;
