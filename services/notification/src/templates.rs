//! Email templates (contract §10), rendered with minijinja. The HTML templates
//! escape every variable (auto-escaping by file name); the plain-text ones are
//! text. Both parts of every email come from the same variables.

use minijinja::{Environment, context};

/// The logo the original emails show.
pub const LOGO_URL: &str =
    "https://res.cloudinary.com/dpqt9h7cn/image/upload/v1764081536/logo_blqxwc.png";

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The compiled templates plus the values every email shares.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    app_url: String,
    email_from: String,
}

/// Which email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    Message,
}

impl Templates {
    /// Loads the embedded templates.
    pub fn new(app_url: String, email_from: String) -> Self {
        let mut env = Environment::new();
        for (name, source) in [
            ("welcome.html", include_str!("../templates/welcome.html")),
            ("welcome.txt", include_str!("../templates/welcome.txt")),
            ("message.html", include_str!("../templates/message.html")),
            ("message.txt", include_str!("../templates/message.txt")),
        ] {
            env.add_template(name, source)
                .expect("embedded templates are valid");
        }
        Self {
            env,
            app_url,
            email_from,
        }
    }

    /// Renders `kind` with a subject (also the title) and a body.
    pub fn render(&self, kind: Kind, subject: &str, body: &str) -> RenderedEmail {
        let stem = match kind {
            Kind::Welcome => "welcome",
            Kind::Message => "message",
        };
        let year = time::OffsetDateTime::now_utc().year();
        let ctx = context! {
            title => subject,
            body => body,
            app_url => self.app_url,
            year => year,
            email_from => self.email_from,
            logo_url => LOGO_URL,
        };
        let render = |name: String| {
            self.env
                .get_template(&name)
                .and_then(|template| template.render(&ctx))
                .expect("embedded templates render")
        };
        RenderedEmail {
            subject: subject.to_owned(),
            html: render(format!("{stem}.html")),
            text: render(format!("{stem}.txt")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_every_variable_and_text_keeps_it_readable() {
        let templates = Templates::new("https://chat.example/?a=1&b=<2>".into(), "n@x.y".into());
        let email = templates.render(
            Kind::Message,
            "New message from <b>eve</b>",
            "Tom & \"Jerry\" <script>",
        );
        // minijinja escapes `/` too (as `&#x2f;`), like OWASP's recommendation.
        assert!(email.html.contains("<h1 style=\"font-size:22px;margin:16px 0\">New message from &lt;b&gt;eve&lt;&#x2f;b&gt;</h1>"));
        assert!(
            email
                .html
                .contains("Tom &amp; &quot;Jerry&quot; &lt;script&gt;")
        );
        assert!(
            email
                .html
                .contains("href=\"https:&#x2f;&#x2f;chat.example&#x2f;?a=1&amp;b=&lt;2&gt;\"")
        );
        assert!(!email.html.contains("<script>"));
        assert!(email.text.contains("Tom & \"Jerry\" <script>"));
        assert_eq!(email.subject, "New message from <b>eve</b>");
    }

    #[test]
    fn welcome_has_the_button_and_heading() {
        let email = Templates::new("http://localhost:8080".into(), "n@x.y".into()).render(
            Kind::Welcome,
            "Welcome to Chat App",
            "Hi",
        );
        assert!(email.html.contains("Welcome to Chat"));
        assert!(email.html.contains("Open Chat"));
        assert!(email.text.contains("Open Chat: http://localhost:8080"));
    }
}
