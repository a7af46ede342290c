//! Templates over a consumed command: `{key}` (Kafka message key),
//! `{routing_key}` (AMQP routing key with `.` → `/`), `{header.NAME}`.

use super::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Key,
    RoutingKey,
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    parts: Vec<Part>,
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
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or(CommandTemplateError::Unclosed)?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "key" => Part::Key,
                "routing_key" => Part::RoutingKey,
                _ => match name.strip_prefix("header.") {
                    Some(h) if !h.is_empty() => Part::Header(h.to_string()),
                    _ => return Err(CommandTemplateError::Unknown(name.to_string())),
                },
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(CommandTemplate { parts })
    }

    pub fn render(&self, c: &Command) -> Result<String, CommandTemplateError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Key => out.push_str(
                    c.key
                        .as_deref()
                        .ok_or(CommandTemplateError::Missing("key".into()))?,
                ),
                Part::RoutingKey => {
                    let rk = c
                        .routing_key
                        .as_deref()
                        .ok_or(CommandTemplateError::Missing("routing key".into()))?;
                    out.extend(rk.chars().map(|ch| if ch == '.' { '/' } else { ch }));
                }
                Part::Header(h) => {
                    let v = c
                        .header(h)
                        .ok_or_else(|| CommandTemplateError::Missing(format!("header {h}")))?;
                    out.push_str(v);
                }
            }
        }
        Ok(out)
    }
}
