//! The `#[skill]` and `#[agent]` attributes of `coderclaw-sdk`.
//!
//! Use them through `coderclaw_sdk::skill` / `coderclaw_sdk::agent`; this
//! crate is an implementation detail.

use proc_macro::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, ReturnType, parse_macro_input, spanned::Spanned};

/// Registers a function as the skill's entry point.
///
/// The function takes one argument of a `serde::Deserialize` type and returns
/// `Result<O, coderclaw_sdk::SkillError>` where `O: serde::Serialize`. The
/// SDK turns the JSON input into the argument and the output back into JSON.
/// One skill per component.
#[proc_macro_attribute]
pub fn skill(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("skill", attr, item)
}

/// Registers a function as an agent's entry point. Same shape as [`skill`];
/// an agent may call `coderclaw_sdk::skills::invoke`.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand("agent", attr, item)
}

fn expand(kind: &str, attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    let checked = if attr.is_empty() {
        check_signature(kind, &func)
    } else {
        let attr = proc_macro2::TokenStream::from(attr);
        Err(syn::Error::new(attr.span(), format!("#[{kind}] takes no arguments")))
    };
    if let Err(e) = checked {
        // Keep the function so the user sees this error alone, not knock-on
        // errors about unused imports or a missing `run`.
        let e = e.to_compile_error();
        return quote! { #e #func }.into();
    }
    let name = &func.sig.ident;
    quote! {
        #func

        #[doc(hidden)]
        struct __CoderclawEntryPoint;

        impl ::coderclaw_sdk::__private::Guest for __CoderclawEntryPoint {
            fn run(input: ::std::string::String) -> ::std::result::Result<
                ::std::string::String,
                ::coderclaw_sdk::__private::bindings::coderclaw::skill::types::SkillError,
            > {
                ::coderclaw_sdk::__private::dispatch(&input, #name)
            }
        }

        ::coderclaw_sdk::__private::export_world!(__CoderclawEntryPoint);
    }
    .into()
}

fn check_signature(kind: &str, func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            format!("#[{kind}] functions cannot be async: skills run to completion on one call"),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("#[{kind}] functions cannot be generic: the input and output types must be concrete"),
        ));
    }
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            format!(
                "#[{kind}] functions take exactly one argument, the deserialised input \
                 (e.g. `fn run(input: MyInput) -> Result<MyOutput, SkillError>`)"
            ),
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(r.span(), format!("#[{kind}] must be a free function, not a method")));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.ident.span(),
            format!("#[{kind}] functions must return `Result<MyOutput, coderclaw_sdk::SkillError>`"),
        ));
    }
    Ok(())
}
