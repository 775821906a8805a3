// Typed ids cannot be mixed up: a handle to a `Product` is made from a `ProductId` only.
use conflict_runtime::prelude::*;

conflict_runtime::typed_id!(pub ProductId);
conflict_runtime::typed_id!(pub CartId);

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
struct Product {
    #[entity(id)]
    id: ProductId,
    stock: u32,
}

fn main() {
    let rt = Runtime::in_memory();
    let cart = CartId::new();
    let _h: Handle<Product> = rt.handle(cart);
}
