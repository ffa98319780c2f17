//! How a shard reaches the delivery and queue manager of every shard, its own included:
//! jobs go to the shard that owns their site, reports go back to the shard whose log holds
//! the message. Other shards are reached only through glommio's channel mesh.

use crate::deliver::qmgr::QueueManager;
use crate::deliver::{Deliverer, Job, Mail, Report};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use std::cell::OnceCell;
use std::rc::Rc;

pub struct Links {
    /// This shard's index in the mesh (what jobs carry as their origin).
    pub me: usize,
    senders: Option<Senders<Mail>>,
    deliverer: OnceCell<Rc<Deliverer>>,
    qmgr: OnceCell<Rc<QueueManager>>,
}

impl Links {
    /// Joins the mesh (when there is more than one shard).
    pub async fn join(
        n: usize,
        mesh: MeshBuilder<Mail, Full>,
    ) -> Result<(Rc<Links>, Option<Receivers<Mail>>), String> {
        let (me, senders, receivers) = if n > 1 {
            let (s, r) = mesh
                .join()
                .await
                .map_err(|e| format!("cannot join the cross-shard channel mesh: {e}"))?;
            (s.peer_id(), Some(s), Some(r))
        } else {
            (0, None, None)
        };
        Ok((
            Rc::new(Links {
                me,
                senders,
                deliverer: OnceCell::new(),
                qmgr: OnceCell::new(),
            }),
            receivers,
        ))
    }

    /// Completes the wiring and starts taking work from other shards.
    pub fn connect(
        self: &Rc<Self>,
        deliverer: Rc<Deliverer>,
        qmgr: Rc<QueueManager>,
        receivers: Option<Receivers<Mail>>,
    ) {
        let _ = self.deliverer.set(deliverer);
        let _ = self.qmgr.set(qmgr);
        let Some(mut receivers) = receivers else {
            return;
        };
        for (_, rx) in receivers.streams() {
            let links = Rc::clone(self);
            glommio::spawn_local(async move {
                while let Some(m) = rx.recv().await {
                    match m {
                        Mail::Deliver(job) => links.enqueue(job),
                        Mail::Report(r) => links.record(r),
                        Mail::Admin(op, id) => {
                            if let Some(q) = links.qmgr.get() {
                                glommio::spawn_local(Rc::clone(q).admin(op, id)).detach();
                            }
                        }
                        Mail::Flush(domain) => {
                            if let Some(q) = links.qmgr.get() {
                                q.flush_domain(&domain);
                            }
                        }
                    }
                }
            })
            .detach();
        }
    }

    fn enqueue(&self, job: Job) {
        if let Some(d) = self.deliverer.get() {
            d.enqueue(job);
        }
    }

    fn record(&self, r: Report) {
        if let Some(q) = self.qmgr.get() {
            glommio::spawn_local(Rc::clone(q).on_report(r)).detach();
        }
    }

    fn send(self: &Rc<Self>, to: usize, m: Mail) {
        let links = Rc::clone(self);
        glommio::spawn_local(async move {
            if let Some(s) = &links.senders {
                if s.send_to(to, m).await.is_err() {
                    log::warn!(
                        "shard {}: shard {to} is gone; its work waits for a restart",
                        links.me
                    );
                }
            }
        })
        .detach();
    }

    /// ETRN: every shard's queue manager retries `domain` now (a message lives on the
    /// shard that accepted it, whichever shard the ETRN client reached). Returns how many
    /// recipients this shard retried.
    pub fn flush_everywhere(self: &Rc<Self>, domain: &str) -> usize {
        if let Some(s) = &self.senders {
            for peer in 0..s.nr_consumers() {
                if peer != self.me {
                    self.send(peer, Mail::Flush(domain.to_string()));
                }
            }
        }
        self.qmgr.get().map_or(0, |q| q.flush_domain(domain))
    }

    /// An operator's command: every shard gets it, the one holding the message acts.
    pub fn admin_everywhere(
        self: &Rc<Self>,
        op: crate::deliver::AdminOp,
        id: crate::queue::record::QueueId,
    ) {
        if let Some(s) = &self.senders {
            for peer in 0..s.nr_consumers() {
                if peer != self.me {
                    self.send(peer, Mail::Admin(op, id));
                }
            }
        }
        if let Some(q) = self.qmgr.get() {
            glommio::spawn_local(Rc::clone(q).admin(op, id)).detach();
        }
    }

    /// For the queue manager: hand a job to its site's owner.
    pub fn dispatcher(self: &Rc<Self>) -> Box<dyn Fn(usize, Job)> {
        let links = Rc::clone(self);
        Box::new(move |owner, job| {
            if owner == links.me || links.senders.is_none() {
                links.enqueue(job);
            } else {
                links.send(owner, Mail::Deliver(job));
            }
        })
    }

    /// For the deliverer: hand a report to the message's log shard.
    pub fn reporter(self: &Rc<Self>) -> Box<dyn Fn(Report)> {
        let links = Rc::clone(self);
        Box::new(move |r| {
            if r.origin == links.me || links.senders.is_none() {
                links.record(r);
            } else {
                links.send(r.origin, Mail::Report(r));
            }
        })
    }
}
