//! The products the shop starts with: (sku, name, price in cents, units in stock). `limited-poster` has little
//! stock, so a long run sells out and later orders for it are cancelled with a reason.

pub(crate) const PRODUCTS: [(&str, &str, u64, u64); 5] = [
    ("rust-mug", "Rust mug", 1_200, 1_000_000),
    ("ferris-plush", "Ferris plush", 2_500, 1_000_000),
    ("crab-socks", "Crab socks", 900, 1_000_000),
    ("async-book", "Async book", 4_200, 1_000_000),
    ("limited-poster", "Limited poster", 3_000, 25),
];
