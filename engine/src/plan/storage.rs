//! `storage:` and `retry:`: how remote stores are reached and retried.

use tributary_connectors::secret::Secret;
use tributary_connectors::store::{S3Settings, Storage};

use crate::config::{PipelineFile, SecretText, Text};

/// S3 settings and the retry policy of every remote store.
pub(super) fn storage(p: &PipelineFile) -> Storage {
    let text = |t: &Option<Text>| t.as_ref().map(|t| t.value.clone());
    let secret = |t: &Option<SecretText>| t.as_ref().map(|t| Secret::new(t.expose()));
    let s3 = &p.storage.s3;
    Storage {
        s3: S3Settings {
            region: text(&s3.region),
            endpoint: text(&s3.endpoint),
            path_style: s3.path_style,
            access_key_id: text(&s3.access_key_id),
            secret_access_key: secret(&s3.secret_access_key),
            session_token: secret(&s3.session_token),
            profile: text(&s3.profile),
        },
        retry: (&p.retry).into(),
        targets: Default::default(),
    }
}
