//! Derive macros for Courier. Use them through the `courier` crate: `#[derive(Message)]`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{DeriveInput, LitStr, parse_macro_input};

/// Implements `courier::Message` for a serde type.
///
/// Attributes, in `#[message(...)]`:
/// - `name = "shop.order.placed.v1"` (required): the stable, versioned message name;
/// - `codec = "courier::Json"`: the body codec (JSON by default);
/// - `partition_key = "field"`: a field whose value orders messages with the same key;
/// - `response = "Type"`: makes the message a request whose reply is `Type`;
/// - `crate = "courier_core"`: where the `Message` trait lives (`courier` by default).
///
/// ```ignore
/// #[derive(Serialize, Deserialize, Message)]
/// #[message(name = "shop.order.placed.v1", partition_key = "order_id")]
/// struct OrderPlaced { order_id: Uuid, total_cents: u64 }
/// ```
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut name: Option<LitStr> = None;
    let mut codec: Option<syn::Path> = None;
    let mut key: Option<syn::Ident> = None;
    let mut response: Option<syn::Type> = None;
    let mut krate: syn::Path = syn::parse_quote!(::courier);
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("message")) {
        attr.parse_nested_meta(|meta| {
            let value: LitStr = meta.value()?.parse()?;
            if meta.path.is_ident("name") {
                name = Some(value);
            } else if meta.path.is_ident("codec") {
                codec = Some(value.parse()?);
            } else if meta.path.is_ident("partition_key") {
                key = Some(value.parse()?);
            } else if meta.path.is_ident("response") {
                response = Some(value.parse()?);
            } else if meta.path.is_ident("crate") {
                krate = value.parse()?;
            } else {
                return Err(
                    meta.error("unknown message attribute; expected name, codec, partition_key, response or crate")
                );
            }
            Ok(())
        })?;
    }
    let name = name.ok_or_else(|| {
        syn::Error::new_spanned(&input.ident, "add #[message(name = \"area.thing.happened.v1\")] to name the message")
    })?;
    if name.value().trim().is_empty() || name.value().contains(char::is_whitespace) {
        return Err(syn::Error::new_spanned(&name, "a message name is non-empty and has no spaces"));
    }
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let codec = codec.map(|c| quote!(#c)).unwrap_or_else(|| quote!(#krate::Json));
    let key_fn = key.map(|k| {
        quote! {
            fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::Some(::std::string::ToString::to_string(&self.#k))
            }
        }
    });
    let request_impl = response.map(|r| {
        quote! {
            impl #impl_generics #krate::Request for #ident #ty_generics #where_clause {
                type Response = #r;
            }
        }
    });
    Ok(quote! {
        impl #impl_generics #krate::Message for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            type Codec = #codec;
            #key_fn
        }
        #request_impl
    })
}
