//! Integration tests of the onboarder with real agents over real QUIC on loopback, and the real
//! sled store in a temporary directory. One binary, one harness.

mod harness;

mod abuse;
mod binary;
mod browser;
mod clock;
mod coap;
mod coap_agent;
mod console;
mod crash;
mod crash_battery;
mod decommission;
mod est;
mod firmware;
mod floods;
mod full_disk;
mod host;
mod hsm;
mod https_door;
mod lifecycle;
mod makers;
mod masa;
mod metrics;
mod onboarding;
mod openapi;
mod operator;
mod purity;
mod reconnect;
mod refusals;
mod replicas;
mod resumption;
mod rollover_kill;
mod root_rollover;
mod search;
mod transparency;
