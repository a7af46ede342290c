//! The one template engine ([`Parts`]): literal text with `{name}`
//! placeholders, parsed once at start-up; rendering is a walk over the parts.
//! Uplink targets and keys ([`Template`]) use `{topic}`, `{topic_dotted}`,
//! `{client_id}`, `{username}` and `{level.N}`; downlink templates
//! ([`CommandTemplate`](super::downlink::CommandTemplate)) their own set.

/// What a template is rendered against.
pub struct Vars<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// A parsed template: literal text and placeholders of kind `V`. The one
/// engine behind [`Template`] (uplink) and
/// [`CommandTemplate`](super::downlink::CommandTemplate) (downlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parts<V>(Vec<Part<V>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part<V> {
    Lit(String),
    Var(V),
}

/// What is wrong with a template's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// A placeholder `var` did not recognise.
    Unknown(String),
    Unclosed,
}

impl<V> Parts<V> {
    /// Splits `s` into text and `{name}` placeholders, each recognised by `var`.
    pub(crate) fn parse(s: &str, var: impl Fn(&str) -> Option<V>) -> Result<Parts<V>, Syntax> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or(Syntax::Unclosed)? + open;
            let name = &rest[open + 1..close];
            parts.push(Part::Var(
                var(name).ok_or_else(|| Syntax::Unknown(name.to_string()))?,
            ));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Parts(parts))
    }

    /// The text if there are no placeholders.
    pub(crate) fn literal(&self) -> Option<String> {
        match self.0.as_slice() {
            [] => Some(String::new()),
            [Part::Lit(s)] => Some(s.clone()),
            _ => None,
        }
    }

    /// Renders, `put` writing each placeholder's value.
    pub(crate) fn render<E>(
        &self,
        mut put: impl FnMut(&V, &mut String) -> Result<(), E>,
    ) -> Result<String, E> {
        let mut out = String::with_capacity(64);
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => put(v, &mut out)?,
            }
        }
        Ok(out)
    }
}

/// The placeholders of uplink templates.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Topic,
    TopicDotted,
    ClientId,
    Username,
    Level(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Parts<Var>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "unknown placeholder {{{0}}} (known: topic, topic_dotted, client_id, username, level.N)"
    )]
    Unknown(String),
    #[error("unclosed '{{' in template")]
    Unclosed,
    #[error("the message has no {0}")]
    Missing(&'static str),
    #[error("the topic has no level {0}")]
    NoLevel(usize),
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let parts = Parts::parse(s, |name| {
            Some(match name {
                "topic" => Var::Topic,
                "topic_dotted" => Var::TopicDotted,
                "client_id" => Var::ClientId,
                "username" => Var::Username,
                _ => Var::Level(name.strip_prefix("level.")?.parse().ok()?),
            })
        });
        match parts {
            Ok(parts) => Ok(Template { parts }),
            Err(Syntax::Unknown(name)) => Err(TemplateError::Unknown(name)),
            Err(Syntax::Unclosed) => Err(TemplateError::Unclosed),
        }
    }

    /// The template's text if it has no placeholders (e.g. a fixed Kafka topic).
    pub fn literal(&self) -> Option<String> {
        self.parts.literal()
    }

    pub fn render(&self, v: &Vars<'_>) -> Result<String, TemplateError> {
        self.parts.render(|var, out| {
            match var {
                Var::Topic => out.push_str(v.topic),
                Var::TopicDotted => {
                    out.extend(v.topic.chars().map(|c| if c == '/' { '.' } else { c }))
                }
                Var::ClientId => out.push_str(v.client_id),
                Var::Username => {
                    out.push_str(v.username.ok_or(TemplateError::Missing("username"))?)
                }
                Var::Level(n) => out.push_str(
                    v.topic
                        .split('/')
                        .nth(*n)
                        .ok_or(TemplateError::NoLevel(*n))?,
                ),
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(topic: &str) -> Vars<'_> {
        Vars {
            topic,
            client_id: "dev-1",
            username: None,
        }
    }

    #[test]
    fn renders_placeholders() {
        let t = Template::parse("x.{level.1}.{client_id}:{topic_dotted}").unwrap();
        assert_eq!(
            t.render(&vars("devices/42/telemetry")).unwrap(),
            "x.42.dev-1:devices.42.telemetry"
        );
        assert_eq!(
            Template::parse("plain").unwrap().literal().as_deref(),
            Some("plain")
        );
        assert_eq!(Template::parse("{topic}").unwrap().literal(), None);
    }

    #[test]
    fn reports_what_cannot_be_resolved() {
        assert_eq!(
            Template::parse("{nope}"),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(Template::parse("a{topic"), Err(TemplateError::Unclosed));
        let t = Template::parse("{username}/{level.5}").unwrap();
        assert_eq!(
            t.render(&vars("a/b")),
            Err(TemplateError::Missing("username"))
        );
        let u = Vars {
            topic: "a/b",
            client_id: "c",
            username: Some("u"),
        };
        assert_eq!(t.render(&u), Err(TemplateError::NoLevel(5)));
    }
}
