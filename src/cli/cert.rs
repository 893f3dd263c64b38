//! `aidos cert`: the cluster's certificate authority (transport security, `aidos_api::tls`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Make a new cluster CA: <dir>/ca.pem (give it to clients and workers: --ca-cert) and <dir>/ca.key (mode 0600;
    /// copy the directory to every scheduler node: `aidos server --tls-dir <dir>`). Refuses to overwrite a CA
    Init(CertInitArgs),
    /// Issue a serving certificate from the CA for a gateway or `aidos serve run` (--tls-cert/--tls-key): writes
    /// <out>.pem and <out>.key (mode 0600)
    Issue(CertIssueArgs),
}

#[derive(Args, Debug)]
pub struct CertIssueArgs {
    /// The CA directory (`aidos cert init --dir`)
    #[arg(long, env = "AIDOS_CERT_DIR")]
    pub dir: PathBuf,
    /// A DNS name or IP address clients reach the server at (repeat, or comma-separate, for several)
    #[arg(long = "name", env = "AIDOS_CERT_NAMES", value_delimiter = ',', required = true)]
    pub names: Vec<String>,
    /// Output path without extension: writes <out>.pem and <out>.key
    #[arg(long, env = "AIDOS_CERT_OUT")]
    pub out: PathBuf,
    /// Lifetime in days
    #[arg(long, env = "AIDOS_CERT_DAYS", default_value_t = 365)]
    pub days: u64,
}

#[derive(Args, Debug)]
pub struct CertInitArgs {
    /// Directory to write the CA into (created if missing)
    #[arg(long, env = "AIDOS_CERT_DIR")]
    pub dir: PathBuf,
}

pub fn run(cmd: CertCmd) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Init(a) => {
            aidos_api::tls::Ca::init(&a.dir)?;
            let ca = a.dir.join(aidos_api::tls::CA_CERT_FILE);
            println!("cluster CA written to {}", a.dir.display());
            println!("  scheduler nodes:  aidos server --tls-dir {} ...", a.dir.display());
            println!("  clients, workers: --ca-cert {} (or AIDOS_CA_CERT)", ca.display());
            println!(
                "  a worker joins:   aidos token create --role worker --join  (then aidos worker --join-token ...)"
            );
            Ok(())
        }
        CertCmd::Issue(a) => {
            anyhow::ensure!(a.days > 0, "--days must be > 0");
            let ca = aidos_api::tls::Ca::load(&a.dir)?;
            let issued = ca.issue_server(&a.names, std::time::Duration::from_secs(a.days * 24 * 3600))?;
            let (cert, key) = (a.out.with_extension("pem"), a.out.with_extension("key"));
            for p in [&cert, &key] {
                anyhow::ensure!(!p.exists(), "{} exists: refusing to overwrite it", p.display());
            }
            aidos_api::tls::write_private(&key, issued.key_pem.as_bytes())?;
            std::fs::write(&cert, &issued.cert_pem).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            println!("wrote {} and {} (for {})", cert.display(), key.display(), a.names.join(", "));
            Ok(())
        }
    }
}
