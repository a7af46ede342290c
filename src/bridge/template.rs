//! Templates for targets and keys: literal text with `{topic}`,
//! `{topic_dotted}`, `{client_id}`, `{username}` and `{level.N}`.
//! Parsed once at start-up; rendering is a walk over the parts.

/// What a template is rendered against.
pub struct Vars<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Topic,
    TopicDotted,
    ClientId,
    Username,
    Level(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
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
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or(TemplateError::Unclosed)? + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "topic" => Part::Topic,
                "topic_dotted" => Part::TopicDotted,
                "client_id" => Part::ClientId,
                "username" => Part::Username,
                _ => match name.strip_prefix("level.").and_then(|n| n.parse().ok()) {
                    Some(n) => Part::Level(n),
                    None => return Err(TemplateError::Unknown(name.to_string())),
                },
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The template's text if it has no placeholders (e.g. a fixed Kafka topic).
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [] => Some(String::new()),
            [Part::Lit(s)] => Some(s.clone()),
            _ => None,
        }
    }

    pub fn render(&self, v: &Vars<'_>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Topic => out.push_str(v.topic),
                Part::TopicDotted => {
                    out.extend(v.topic.chars().map(|c| if c == '/' { '.' } else { c }))
                }
                Part::ClientId => out.push_str(v.client_id),
                Part::Username => {
                    out.push_str(v.username.ok_or(TemplateError::Missing("username"))?)
                }
                Part::Level(n) => out.push_str(
                    v.topic
                        .split('/')
                        .nth(*n)
                        .ok_or(TemplateError::NoLevel(*n))?,
                ),
            }
        }
        Ok(out)
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
