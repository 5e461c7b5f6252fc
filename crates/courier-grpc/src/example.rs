//! The example service, `courier.example.v1.Inventory` (`proto/courier/example/v1/inventory.proto`, compiled by
//! protox in `build.rs`: no system `protoc`), and an in-memory implementation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    tonic::include_proto!("courier.example.v1");
}

pub use pb::inventory_client::InventoryClient;
pub use pb::inventory_server::{Inventory, InventoryServer};
pub use pb::{Stock, StockRequest};

/// The path of `GetStock`, for [`ResilientChannelBuilder::idempotent`](crate::client::ResilientChannelBuilder::idempotent).
pub const GET_STOCK: &str = "/courier.example.v1.Inventory/GetStock";

/// Stock held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryInventory {
    stock: Arc<Mutex<BTreeMap<String, Stock>>>,
}

impl MemoryInventory {
    /// Three products.
    pub fn with_demo_stock() -> Self {
        let inventory = Self::default();
        for (sku, name, price_cents, available) in [
            ("rust-mug", "Rust mug", 1200, 10),
            ("ferris-plush", "Ferris plush", 2500, 3),
            ("crab-socks", "Crab socks", 900, 0),
        ] {
            inventory.set(Stock { sku: sku.into(), name: name.into(), price_cents, available });
        }
        inventory
    }

    /// Sets a product's stock.
    pub fn set(&self, stock: Stock) {
        self.stock.lock().unwrap_or_else(|p| p.into_inner()).insert(stock.sku.clone(), stock);
    }
}

#[tonic::async_trait]
impl Inventory for MemoryInventory {
    async fn get_stock(&self, request: Request<StockRequest>) -> Result<Response<Stock>, Status> {
        let sku = request.into_inner().sku;
        if sku.is_empty() {
            return Err(Status::invalid_argument("sku: give a product's sku"));
        }
        let stock = self.stock.lock().unwrap_or_else(|p| p.into_inner()).get(&sku).cloned();
        stock.map(Response::new).ok_or_else(|| Status::not_found(format!("no product '{sku}'")))
    }
}
