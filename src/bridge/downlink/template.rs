//! Templates over a consumed command: `{key}` (Kafka message key),
//! `{routing_key}` (AMQP routing key with `.` → `/`), `{header.NAME}`.

use super::Command;
use crate::bridge::template::{Parts, Syntax};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Key,
    RoutingKey,
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    parts: Parts<Var>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandTemplateError {
    #[error("unknown placeholder {{{0}}} (known: key, routing_key, header.NAME)")]
    Unknown(String),
    #[error("unclosed '{{' in template")]
    Unclosed,
    #[error("the command has no {0}")]
    Missing(String),
}

impl CommandTemplate {
    pub fn parse(s: &str) -> Result<CommandTemplate, CommandTemplateError> {
        let parts = Parts::parse(s, |name| match name {
            "key" => Some(Var::Key),
            "routing_key" => Some(Var::RoutingKey),
            _ => match name.strip_prefix("header.") {
                Some(h) if !h.is_empty() => Some(Var::Header(h.to_string())),
                _ => None,
            },
        });
        match parts {
            Ok(parts) => Ok(CommandTemplate { parts }),
            Err(Syntax::Unknown(name)) => Err(CommandTemplateError::Unknown(name)),
            Err(Syntax::Unclosed) => Err(CommandTemplateError::Unclosed),
        }
    }

    pub fn render(&self, c: &Command) -> Result<String, CommandTemplateError> {
        self.parts.render(|var, out| {
            match var {
                Var::Key => out.push_str(
                    c.key
                        .as_deref()
                        .ok_or(CommandTemplateError::Missing("key".into()))?,
                ),
                Var::RoutingKey => {
                    let rk = c
                        .routing_key
                        .as_deref()
                        .ok_or(CommandTemplateError::Missing("routing key".into()))?;
                    out.extend(rk.chars().map(|ch| if ch == '.' { '/' } else { ch }));
                }
                Var::Header(h) => {
                    let v = c
                        .header(h)
                        .ok_or_else(|| CommandTemplateError::Missing(format!("header {h}")))?;
                    out.push_str(v);
                }
            }
            Ok(())
        })
    }
}
