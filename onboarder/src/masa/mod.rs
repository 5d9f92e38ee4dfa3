//! Where nonced vouchers come from: the manufacturer's MASA (RFC 8995 5.5), asked at each
//! voucher request of a device of its maker. A nonced voucher is fresh by the device's nonce,
//! so a device without a trustworthy clock can onboard with it. Vouchers imported in bulk stay
//! the way without a MASA, and the fallback when it does not answer.
//!
//! Two implementations: [`FactoryMasa`], a manufacturer in this process (the demo, tests), and
//! [`https::HttpsMasa`], a manufacturer's MASA across the network (`factory masa serve`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use certs::factory::Manufacturer;

use crate::core::MakerId;
use crate::core::import::Anchor;
use crate::service::Clock;

pub mod https;

/// What a MASA answer takes.
pub type MasaFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;

/// A manufacturer's voucher service.
pub trait Masa: Send + Sync {
    /// A voucher for the device presenting `idevid`, answering its signed voucher request,
    /// pinning `owner_ca`; or why not. `anchors` are the imported anchors of the device's maker
    /// (never empty): an implementation across the network trusts them for the MASA's TLS
    /// certificate and checks the voucher with their MASA certificate, so what it returns is
    /// the maker's.
    fn voucher<'a>(
        &'a self,
        anchors: &'a [Anchor],
        idevid: &'a [u8],
        signed_request: &'a [u8],
        owner_ca: &'a [u8],
    ) -> MasaFuture<'a>;
}

/// A manufacturer in this process: the demo, tests, or a factory that runs its own onboarder.
pub struct FactoryMasa {
    maker: MakerId,
    manufacturer: Arc<Manufacturer>,
    clock: Clock,
}

impl FactoryMasa {
    /// The MASA of `manufacturer`, signing at the time of `clock`.
    pub fn new(manufacturer: Arc<Manufacturer>, clock: Clock) -> Result<Self, certs::CertError> {
        let spki = certs::CertInfo::parse(manufacturer.root_cert())?.spki_der;
        Ok(FactoryMasa {
            maker: MakerId::of_spki(&spki),
            manufacturer,
            clock,
        })
    }
}

impl Masa for FactoryMasa {
    fn voucher<'a>(
        &'a self,
        anchors: &'a [Anchor],
        idevid: &'a [u8],
        signed_request: &'a [u8],
        owner_ca: &'a [u8],
    ) -> MasaFuture<'a> {
        Box::pin(async move {
            if !anchors.iter().any(|a| a.maker == self.maker) {
                return Err("the device is of another maker than this MASA's".into());
            }
            self.manufacturer
                .nonced_voucher(idevid, signed_request, owner_ca, (self.clock)())
                .map_err(|e| e.to_string())
        })
    }
}
