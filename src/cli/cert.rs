//! `aidos cert`: the cluster's certificate authority (transport security, `aidos_api::tls`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Make a new cluster CA: <dir>/ca.pem (give it to clients and workers: --ca-cert) and <dir>/ca.key (mode 0600;
    /// copy the directory to every scheduler node: `aidos server --tls-dir <dir>`). Refuses to overwrite a CA
    Init(CertInitArgs),
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
    }
}
